// Rights, file types and open modes as wasmtime 49 reports them, through the raw
// WASI calls: the preopen (descriptor 3), directories and files opened beneath it,
// and which rights a directory refuses.
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

#define ALL_RIGHTS 0x3fffffffull

static void fdstat(const char *what, int fd) {
    __wasi_fdstat_t st;
    __wasi_errno_t e = __wasi_fd_fdstat_get(fd, &st);
    if (e) { printf("%s: fdstat errno %d\n", what, e); return; }
    printf("%s: type %d flags %d base 0x%llx inheriting 0x%llx\n", what, st.fs_filetype,
           st.fs_flags, (unsigned long long)st.fs_rights_base,
           (unsigned long long)st.fs_rights_inheriting);
}

// path_open beneath the preopen; prints the errno or the fdstat, and closes.
static void try_open(const char *what, const char *path, int oflags,
                     unsigned long long base, int fdflags) {
    __wasi_fd_t fd;
    __wasi_errno_t e = __wasi_path_open(3, 0, path, oflags, base, 0, fdflags, &fd);
    if (e) { printf("%s: errno %d\n", what, e); return; }
    fdstat(what, fd);
    (void)__wasi_fd_close(fd);
}

static __wasi_fd_t open_or_die(const char *path, int oflags, unsigned long long base,
                               int fdflags) {
    __wasi_fd_t fd = 0;
    __wasi_errno_t e = __wasi_path_open(3, 0, path, oflags, base, 0, fdflags, &fd);
    if (e) printf("open %s: errno %d\n", path, e);
    return fd;
}

static int write_str(__wasi_fd_t fd, const char *s) {
    __wasi_ciovec_t iov = {(const uint8_t *)s, strlen(s)};
    __wasi_size_t n;
    return __wasi_fd_write(fd, &iov, 1, &n);
}

int main(void) {
    // The preopen, and the directory itself opened again with the rights it reports
    // (how Rust's test harnesses find their scratch directory).
    fdstat("preopen", 3);
    __wasi_fdstat_t pre;
    if (__wasi_fd_fdstat_get(3, &pre)) return 1;
    try_open("dir with the preopen's rights", ".", __WASI_OFLAGS_DIRECTORY,
             pre.fs_rights_base, 0);
    try_open("dir with no rights", ".", __WASI_OFLAGS_DIRECTORY, 0, 0);
    try_open("dir without O_DIRECTORY", ".", 0, 0, 0);
    try_open("dir with every right", ".", __WASI_OFLAGS_DIRECTORY, ALL_RIGHTS, 0);
    try_open("dir with all but fd_write", ".", __WASI_OFLAGS_DIRECTORY,
             ALL_RIGHTS & ~__WASI_RIGHTS_FD_WRITE, 0);
    // Only fd_write makes a directory refuse to open.
    for (int bit = 0; bit < 30; bit++) {
        __wasi_fd_t fd;
        __wasi_errno_t e =
            __wasi_path_open(3, 0, ".", __WASI_OFLAGS_DIRECTORY, 1ull << bit, 0, 0, &fd);
        if (e) printf("dir with right %d only: errno %d\n", bit, e);
        else (void)__wasi_fd_close(fd);
    }
    try_open("dir with O_TRUNC", ".", __WASI_OFLAGS_DIRECTORY | __WASI_OFLAGS_TRUNC, 0, 0);
    try_open("dir with O_EXCL", ".", __WASI_OFLAGS_DIRECTORY | __WASI_OFLAGS_EXCL, 0, 0);
    try_open("dir with O_TRUNC, no O_DIRECTORY", ".", __WASI_OFLAGS_TRUNC, 0, 0);
    try_open("dir with O_CREAT, no O_DIRECTORY", ".", __WASI_OFLAGS_CREAT, 0, 0);
    try_open("dir with append", ".", __WASI_OFLAGS_DIRECTORY, 0, __WASI_FDFLAGS_APPEND);

    // Calls a directory does not take.
    __wasi_fd_t dir = open_or_die(".", __WASI_OFLAGS_DIRECTORY, 0, 0);
    __wasi_filesize_t at = 0;
    printf("dir: allocate %d datasync %d sync %d set_size %d seek %d tell %d set_flags %d "
           "advise %d\n",
           __wasi_fd_allocate(dir, 0, 10), __wasi_fd_datasync(dir), __wasi_fd_sync(dir),
           __wasi_fd_filestat_set_size(dir, 0), __wasi_fd_seek(dir, 0, __WASI_WHENCE_CUR, &at),
           __wasi_fd_tell(dir, &at), __wasi_fd_fdstat_set_flags(dir, 0),
           __wasi_fd_advise(dir, 0, 0, __WASI_ADVICE_NORMAL));
    (void)__wasi_fd_close(dir);

    // Files: read unless only fd_write is asked, write when asked or when created
    // or truncated; append alone gives no write access.
    try_open("create with no rights", "f", __WASI_OFLAGS_CREAT, 0, 0);
    try_open("create with fd_write", "f", __WASI_OFLAGS_CREAT, __WASI_RIGHTS_FD_WRITE, 0);
    try_open("create with fd_read", "f", __WASI_OFLAGS_CREAT, __WASI_RIGHTS_FD_READ, 0);
    try_open("fd_read", "f", 0, __WASI_RIGHTS_FD_READ, 0);
    try_open("fd_write", "f", 0, __WASI_RIGHTS_FD_WRITE, 0);
    try_open("fd_read and fd_write", "f", 0, __WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_WRITE, 0);
    try_open("every right", "f", 0, ALL_RIGHTS, 0);
    try_open("fd_datasync", "f", 0, __WASI_RIGHTS_FD_DATASYNC, 0);
    try_open("truncate with no rights", "f", __WASI_OFLAGS_TRUNC, 0, 0);
    try_open("truncate with fd_write", "f", __WASI_OFLAGS_TRUNC, __WASI_RIGHTS_FD_WRITE, 0);
    try_open("truncate with fd_read", "f", __WASI_OFLAGS_TRUNC, __WASI_RIGHTS_FD_READ, 0);
    try_open("append", "f", 0, 0, __WASI_FDFLAGS_APPEND);
    try_open("file with O_DIRECTORY", "f", __WASI_OFLAGS_DIRECTORY, 0, 0);
    try_open("file with O_EXCL", "f", __WASI_OFLAGS_EXCL, 0, 0);
    try_open("missing file with O_EXCL", "g", __WASI_OFLAGS_EXCL, 0, 0);
    try_open("file with O_CREAT|O_EXCL", "f", __WASI_OFLAGS_CREAT | __WASI_OFLAGS_EXCL, 0, 0);

    __wasi_fd_t f = open_or_die("f", 0, __WASI_RIGHTS_FD_FILESTAT_SET_SIZE, 0);
    printf("set_size without write access: %d\n", __wasi_fd_filestat_set_size(f, 3));
    printf("allocate on a file: %d\n", __wasi_fd_allocate(f, 0, 3));
    (void)__wasi_fd_close(f);
    f = open_or_die("f", 0, 0, __WASI_FDFLAGS_APPEND);
    printf("write to append without fd_write: %d\n", write_str(f, "x"));
    (void)__wasi_fd_close(f);
    f = open_or_die("f", 0, __WASI_RIGHTS_FD_WRITE, 0);
    printf("write with fd_write: %d\n", write_str(f, "x"));
    printf("set_size with fd_write: %d\n", __wasi_fd_filestat_set_size(f, 3));
    (void)__wasi_fd_close(f);
    printf("unlink: %d\n", __wasi_path_unlink_file(3, "f"));
    return 0;
}
