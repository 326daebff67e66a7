// Stdio descriptors as wasmtime 49 treats them: their file status, the calls they
// refuse, and fd_renumber moving streams to and from file descriptors. Output is
// collected and written at the end to whichever descriptor then holds stdout.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

static char out[8192];
static int used;

static void say(const char *format, ...) {
    va_list args;
    va_start(args, format);
    used += vsnprintf(out + used, sizeof out - used, format, args);
    va_end(args);
}

static void filestat(const char *what, int fd) {
    __wasi_filestat_t st;
    memset(&st, 0x55, sizeof st);
    __wasi_errno_t e = __wasi_fd_filestat_get(fd, &st);
    if (e) { say("%s: filestat errno %d\n", what, e); return; }
    say("%s: dev %llu ino %llu type %d nlink %llu size %llu times %llu %llu %llu\n", what,
        (unsigned long long)st.dev, (unsigned long long)st.ino, st.filetype,
        (unsigned long long)st.nlink, (unsigned long long)st.size,
        (unsigned long long)st.atim, (unsigned long long)st.mtim, (unsigned long long)st.ctim);
}

static void fdstat(const char *what, int fd) {
    __wasi_fdstat_t st;
    __wasi_errno_t e = __wasi_fd_fdstat_get(fd, &st);
    if (e) { say("%s: fdstat errno %d\n", what, e); return; }
    say("%s: type %d base 0x%llx\n", what, st.fs_filetype,
        (unsigned long long)st.fs_rights_base);
}

static int create(const char *path) {
    __wasi_fd_t fd = 0;
    __wasi_errno_t e = __wasi_path_open(3, 0, path, __WASI_OFLAGS_CREAT,
                                        __WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_WRITE, 0, 0, &fd);
    say("open %s: errno %d fd %d\n", path, e, e ? -1 : (int)fd);
    return fd;
}

static __wasi_errno_t write_str(int fd, const char *s) {
    __wasi_ciovec_t iov = {(const uint8_t *)s, strlen(s)};
    __wasi_size_t n;
    return __wasi_fd_write(fd, &iov, 1, &n);
}

int main(void) {
    // Status, and the calls stdio refuses, per stream.
    for (int fd = 0; fd < 3; fd++) {
        char what[16];
        snprintf(what, sizeof what, "fd %d", fd);
        filestat(what, fd);
        fdstat(what, fd);
        __wasi_filesize_t at;
        char buf[64];
        __wasi_size_t n;
        __wasi_iovec_t iov = {(uint8_t *)buf, 0};
        __wasi_ciovec_t ciov = {(const uint8_t *)"", 0};
        __wasi_fd_t opened;
        say("%s: set_flags %d set_times %d set_size %d sync %d datasync %d advise %d "
            "allocate %d seek %d tell %d readdir %d set_rights %d pread %d pwrite %d "
            "path_open %d mkdir %d prestat_dir_name %d\n", what,
            __wasi_fd_fdstat_set_flags(fd, 0), __wasi_fd_filestat_set_times(fd, 0, 0, 0),
            __wasi_fd_filestat_set_size(fd, 0), __wasi_fd_sync(fd), __wasi_fd_datasync(fd),
            __wasi_fd_advise(fd, 0, 0, __WASI_ADVICE_NORMAL), __wasi_fd_allocate(fd, 0, 0),
            __wasi_fd_seek(fd, 0, __WASI_WHENCE_SET, &at), __wasi_fd_tell(fd, &at),
            __wasi_fd_readdir(fd, (uint8_t *)buf, sizeof buf, 0, &n),
            __wasi_fd_fdstat_set_rights(fd, 0, 0), __wasi_fd_pread(fd, &iov, 1, 0, &n),
            __wasi_fd_pwrite(fd, &ciov, 1, 0, &n), __wasi_path_open(fd, 0, "x", 0, 0, 0, 0, &opened),
            __wasi_path_create_directory(fd, "x"),
            __wasi_fd_prestat_dir_name(fd, (uint8_t *)buf, sizeof buf));
    }
    filestat("fd 99", 99);

    // Renumbering needs both descriptors open.
    say("renumber 1 to unused 99: %d\n", __wasi_fd_renumber(1, 99));
    say("renumber unused 99 to 1: %d\n", __wasi_fd_renumber(99, 1));
    say("renumber 1 to 1: %d\n", __wasi_fd_renumber(1, 1));

    // Stdout moves onto a file's descriptor, which it replaces.
    int x = create("x");
    say("renumber 1 to x: %d\n", __wasi_fd_renumber(1, x));
    fdstat("fd 1 after", 1);
    fdstat("x after", x);
    filestat("x after", x);
    say("write to fd 1: %d\n", write_str(1, "lost\n"));
    say("write to x: %d\n", write_str(x, "stdout through x\n"));

    // A file moves onto stdin's descriptor; numbers freed are handed out again,
    // highest first.
    int y = create("y");
    say("renumber y to 0: %d\n", __wasi_fd_renumber(y, 0));
    fdstat("fd 0 now", 0);
    fdstat("y after", y);
    say("write to fd 0: %d\n", write_str(0, "into y"));

    // One stream onto another: stdout replaces stderr.
    say("renumber x to 2: %d\n", __wasi_fd_renumber(x, 2));
    fdstat("fd 2 now", 2);
    say("write to fd 2: %d\n", write_str(2, "stdout through fd 2\n"));

    say("close 0: %d\n", __wasi_fd_close(0));
    char buf[8];
    __wasi_iovec_t iov = {(uint8_t *)buf, sizeof buf};
    __wasi_size_t n;
    say("read closed stdin: %d\n", __wasi_fd_read(0, &iov, 1, &n));
    int z = create("z");
    say("close z: %d\n", __wasi_fd_close(z));
    int z1 = create("z");
    int z2 = create("z");
    int z3 = create("z");
    say("close all: %d %d %d\n", __wasi_fd_close(z1), __wasi_fd_close(z2), __wasi_fd_close(z3));

    __wasi_fd_t fd;
    char content[16] = {0};
    __wasi_iovec_t into = {(uint8_t *)content, sizeof content - 1};
    if (__wasi_path_open(3, 0, "y", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd) == 0) {
        (void)__wasi_fd_read(fd, &into, 1, &n);
        (void)__wasi_fd_close(fd);
    }
    say("y holds '%s'\n", content);
    say("cleanup: %d %d %d\n", __wasi_path_unlink_file(3, "x"), __wasi_path_unlink_file(3, "y"),
        __wasi_path_unlink_file(3, "z"));

    // A preopen moves with its descriptor too.
    __wasi_fd_t dir = 0;
    __wasi_prestat_t prestat;
    char name[16] = {0};
    say("open the preopen again: %d\n",
        __wasi_path_open(3, 0, ".", __WASI_OFLAGS_DIRECTORY, 0, 0, 0, &dir));
    say("renumber 3 to it: %d\n", __wasi_fd_renumber(3, dir));
    say("prestat of 3: %d\n", __wasi_fd_prestat_get(3, &prestat));
    say("prestat of the new number: %d, name %d '%s'\n", __wasi_fd_prestat_get(dir, &prestat),
        __wasi_fd_prestat_dir_name(dir, (uint8_t *)name, sizeof name - 1), name);
    fdstat("the moved preopen", dir);
    return write_str(2, out) ? 1 : 0;
}
