// Descriptor flags, appends, hard links and wrong descriptor kinds as wasmtime 49
// answers them, through the raw WASI calls on the preopen (descriptor 3).
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

#define RW (__WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_WRITE)

static __wasi_fd_t open_file(const char *what, const char *path, int oflags, int fdflags) {
    __wasi_fd_t fd = 0;
    __wasi_errno_t e = __wasi_path_open(3, 0, path, oflags, RW, 0, fdflags, &fd);
    printf("%s: errno %d\n", what, e);
    return e ? 0 : fd;
}

static void flags(const char *what, __wasi_fd_t fd) {
    __wasi_fdstat_t st;
    __wasi_errno_t e = __wasi_fd_fdstat_get(fd, &st);
    printf("%s: errno %d flags %d\n", what, e, e ? -1 : st.fs_flags);
}

static void write_str(const char *what, __wasi_fd_t fd, const char *s) {
    __wasi_ciovec_t iov = {(const uint8_t *)s, strlen(s)};
    __wasi_size_t n = 0;
    __wasi_errno_t e = __wasi_fd_write(fd, &iov, 1, &n);
    __wasi_filesize_t at = 0;
    (void)__wasi_fd_tell(fd, &at);
    printf("%s: errno %d wrote %d, offset now %llu\n", what, e, (int)n, (unsigned long long)at);
}

static void pwrite_str(const char *what, __wasi_fd_t fd, const char *s, __wasi_filesize_t to) {
    __wasi_ciovec_t iov = {(const uint8_t *)s, strlen(s)};
    __wasi_size_t n = 0;
    __wasi_errno_t e = __wasi_fd_pwrite(fd, &iov, 1, to, &n);
    __wasi_filesize_t at = 0;
    (void)__wasi_fd_tell(fd, &at);
    printf("%s: errno %d wrote %d, offset now %llu\n", what, e, (int)n, (unsigned long long)at);
}

static void seek(__wasi_fd_t fd, __wasi_filedelta_t to) {
    __wasi_filesize_t at;
    printf("seek to %lld: errno %d\n", (long long)to,
           __wasi_fd_seek(fd, to, __WASI_WHENCE_SET, &at));
}

static void show(const char *path) {
    __wasi_fd_t fd;
    char buf[64] = {0};
    __wasi_iovec_t iov = {(uint8_t *)buf, sizeof buf - 1};
    __wasi_size_t n = 0;
    if (__wasi_path_open(3, 0, path, 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd)) return;
    (void)__wasi_fd_read(fd, &iov, 1, &n);
    (void)__wasi_fd_close(fd);
    printf("%s holds '%s'\n", path, buf);
}

int main(void) {
    // Append combines with truncation; writes go to the end, and a positioned write
    // on an append descriptor appends too without moving the offset (Linux's rule).
    __wasi_fd_t f = open_file("create, truncate, append", "a",
                              __WASI_OFLAGS_CREAT | __WASI_OFLAGS_TRUNC, __WASI_FDFLAGS_APPEND);
    flags("append", f);
    write_str("write abc", f, "abc");
    seek(f, 0);
    write_str("write d at 0", f, "d");
    seek(f, 1);
    pwrite_str("pwrite Z at 0", f, "Z", 0);
    printf("set flags 0: %d\n", __wasi_fd_fdstat_set_flags(f, 0));
    flags("no append", f);
    seek(f, 0);
    write_str("write Q at 0", f, "Q");
    pwrite_str("pwrite P at 1", f, "P", 1);
    printf("set flags append: %d\n", __wasi_fd_fdstat_set_flags(f, __WASI_FDFLAGS_APPEND));
    write_str("write E", f, "E");
    (void)__wasi_fd_close(f);
    show("a");

    // No synchronous-write modes: path_open says notsup, fd_fdstat_set_flags inval.
    // Nonblock is kept and reported.
    const int tried[] = {__WASI_FDFLAGS_DSYNC, __WASI_FDFLAGS_NONBLOCK, __WASI_FDFLAGS_RSYNC,
                         __WASI_FDFLAGS_SYNC, __WASI_FDFLAGS_APPEND | __WASI_FDFLAGS_SYNC};
    for (unsigned i = 0; i < sizeof tried / sizeof tried[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "open with fdflags %d", tried[i]);
        f = open_file(what, "a", 0, tried[i]);
        if (f) {
            flags(what, f);
            (void)__wasi_fd_close(f);
        }
        f = open_file("open plain", "a", 0, 0);
        printf("set fdflags %d: %d\n", tried[i], __wasi_fd_fdstat_set_flags(f, tried[i]));
        flags("after", f);
        (void)__wasi_fd_close(f);
    }
    __wasi_fd_t d = 0;
    printf("directory with sync: %d\n",
           __wasi_path_open(3, 0, ".", __WASI_OFLAGS_DIRECTORY, 0, 0, __WASI_FDFLAGS_SYNC, &d));
    printf("directory with nonblock: %d\n",
           __wasi_path_open(3, 0, ".", __WASI_OFLAGS_DIRECTORY, 0, 0, __WASI_FDFLAGS_NONBLOCK, &d));
    flags("directory with nonblock", d);
    (void)__wasi_fd_close(d);

    // Hard links never follow a symlink: asking to is inval, before the path is read.
    printf("link: %d\n", __wasi_path_link(3, 0, "a", 3, "l1"));
    printf("link following symlinks: %d\n",
           __wasi_path_link(3, __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, "a", 3, "l2"));
    printf("link following symlinks, missing source: %d\n",
           __wasi_path_link(3, __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, "missing", 3, "l2"));
    printf("link following symlinks, bad descriptor: %d\n",
           __wasi_path_link(99, __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, "a", 3, "l2"));

    // A file where a directory belongs: only path_open says notdir.
    f = open_file("open a", "a", 0, 0);
    __wasi_filestat_t st;
    char buf[64];
    __wasi_size_t n;
    printf("file as directory: open %d mkdir %d rmdir %d unlink %d rename from %d rename to %d "
           "filestat %d symlink %d readlink %d link from %d link to %d set_times %d readdir %d\n",
           __wasi_path_open(f, 0, "x", 0, 0, 0, 0, &d), __wasi_path_create_directory(f, "x"),
           __wasi_path_remove_directory(f, "x"), __wasi_path_unlink_file(f, "x"),
           __wasi_path_rename(f, "x", 3, "y"), __wasi_path_rename(3, "a", f, "y"),
           __wasi_path_filestat_get(f, 0, "x", &st), __wasi_path_symlink("x", f, "y"),
           __wasi_path_readlink(f, "x", (uint8_t *)buf, sizeof buf, &n),
           __wasi_path_link(f, 0, "x", 3, "y"), __wasi_path_link(3, 0, "a", f, "y"),
           __wasi_path_filestat_set_times(f, 0, "x", 0, 0, __WASI_FSTFLAGS_MTIM_NOW),
           __wasi_fd_readdir(f, (uint8_t *)buf, sizeof buf, 0, &n));
    printf("prestat of a file: %d, its name: %d; of a closed descriptor: %d\n",
           __wasi_fd_prestat_get(f, (__wasi_prestat_t *)buf),
           __wasi_fd_prestat_dir_name(f, (uint8_t *)buf, sizeof buf),
           __wasi_fd_prestat_dir_name(99, (uint8_t *)buf, sizeof buf));
    (void)__wasi_fd_close(f);

    printf("cleanup: %d %d\n", __wasi_path_unlink_file(3, "a"), __wasi_path_unlink_file(3, "l1"));
    return 0;
}
