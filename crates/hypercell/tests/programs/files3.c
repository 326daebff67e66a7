// Edge cases of the file calls: open flags, offsets, directory listing in small
// pieces, and calls on the wrong kind of file.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>

static void report(const char *what, int rc) {
    if (rc < 0) printf("%s: errno %d (%s)\n", what, errno, strerror(errno));
    else printf("%s: ok %d\n", what, rc);
}

static int opened(int fd) { if (fd >= 0) close(fd); return fd < 0 ? -1 : 0; }

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "sandbox";
    if (chdir(dir) != 0) { printf("chdir: errno %d\n", errno); return 1; }

    int fd = open("f.txt", O_CREAT | O_RDWR, 0644);
    report("write", (int)write(fd, "0123456789", 10));
    report("seek end -3", (int)lseek(fd, -3, SEEK_END));
    report("seek cur -2", (int)lseek(fd, -2, SEEK_CUR));
    report("seek before the start", (int)lseek(fd, -100, SEEK_SET));
    report("seek past the end", (int)lseek(fd, 20, SEEK_SET));
    report("write past the end", (int)write(fd, "X", 1));
    struct stat st;
    fstat(fd, &st);
    printf("size with a hole: %lld\n", (long long)st.st_size);
    char buf[32] = {0};
    report("pread beyond the end", (int)pread(fd, buf, 8, 100));
    report("pwrite at 2", (int)pwrite(fd, "ab", 2, 2));
    report("pread at 0", (int)pread(fd, buf, 10, 0));
    printf("content: %.10s\n", buf);
    close(fd);

    report("O_CREAT|O_DIRECTORY", opened(open("newdir", O_CREAT | O_DIRECTORY | O_RDONLY, 0755)));
    report("O_DIRECTORY on a file", opened(open("f.txt", O_DIRECTORY | O_RDONLY)));
    report("O_EXCL on an existing file", opened(open("f.txt", O_CREAT | O_EXCL | O_RDWR, 0644)));
    report("O_TRUNC", opened(open("f.txt", O_TRUNC | O_WRONLY)));
    stat("f.txt", &st);
    printf("size after O_TRUNC: %lld\n", (long long)st.st_size);
    report("open with a trailing slash on a file", opened(open("f.txt/", O_RDONLY)));
    report("open an empty path", opened(open("", O_RDONLY)));
    char long_name[300];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    report("open a too-long name", opened(open(long_name, O_CREAT | O_WRONLY, 0644)));

    mkdir("d", 0755);
    for (int i = 0; i < 12; i++) {
        char name[32];
        snprintf(name, sizeof name, "d/entry-%02d", i);
        close(open(name, O_CREAT | O_WRONLY, 0644));
    }
    // List d through fd_readdir with a buffer that holds about one entry at a time.
    int d = open("d", O_RDONLY | O_DIRECTORY);
    __wasi_dircookie_t cookie = 0;
    int seen = 0, calls = 0;
    for (;;) {
        char small[40];
        __wasi_size_t used = 0;
        __wasi_errno_t e = __wasi_fd_readdir(d, (uint8_t *)small, sizeof small, cookie, &used);
        calls++;
        if (e) { printf("readdir: errno %d\n", e); break; }
        if (used < sizeof(__wasi_dirent_t)) break;
        __wasi_dirent_t entry;
        memcpy(&entry, small, sizeof entry);
        cookie = entry.d_next;
        seen++;
        if (calls > 100) break;
    }
    printf("entries seen one at a time: %d\n", seen);
    close(d);

    report("rmdir a file", rmdir("f.txt"));
    report("unlink a directory", unlink("d"));
    report("rename a file over a directory", rename("f.txt", "d"));
    report("rename a directory over a file", rename("d", "f.txt"));
    report("readlink on a file", (int)readlink("f.txt", buf, sizeof buf));
    report("symlink onto an existing name", symlink("x", "f.txt"));
    report("lstat a dangling symlink", (symlink("nowhere", "dangling"), lstat("dangling", &st)));
    printf("is a link: %d\n", S_ISLNK(st.st_mode));
    report("stat through the dangling symlink", stat("dangling", &st));
    report("fstat a directory", (fd = open(".", O_RDONLY | O_DIRECTORY), fstat(fd, &st)));
    printf("is a directory: %d\n", S_ISDIR(st.st_mode));
    close(fd);

    for (int i = 0; i < 12; i++) {
        char name[32];
        snprintf(name, sizeof name, "d/entry-%02d", i);
        unlink(name);
    }
    rmdir("d");
    rmdir("newdir");
    unlink("dangling");
    unlink("f.txt");
    return 0;
}
