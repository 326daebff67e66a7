// File calls in a preopened directory, with their error cases, and escape attempts.
// Prints one line per step: what was done and its result or errno.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void report(const char *what, int rc) {
    if (rc < 0) printf("%s: errno %d (%s)\n", what, errno, strerror(errno));
    else printf("%s: ok %d\n", what, rc);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "sandbox";
    if (chdir(dir) != 0) { printf("chdir: errno %d\n", errno); return 1; }

    int fd = open("hello.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    report("create hello.txt", fd < 0 ? -1 : 0);
    report("write", (int)write(fd, "hello, files\n", 13));
    report("close", close(fd));
    report("create again with O_EXCL", open("hello.txt", O_CREAT | O_EXCL | O_WRONLY, 0644) < 0 ? -1 : 0);

    fd = open("hello.txt", O_RDONLY);
    char buf[64] = {0};
    report("read", (int)read(fd, buf, sizeof buf - 1));
    printf("content: %s", buf);
    report("seek to 7", (int)lseek(fd, 7, SEEK_SET));
    memset(buf, 0, sizeof buf);
    report("read after seek", (int)read(fd, buf, 5));
    printf("content: %s\n", buf);
    report("pread at 0", (int)pread(fd, buf, 5, 0));
    report("write to a read-only descriptor", (int)write(fd, "x", 1));
    struct stat st;
    report("fstat", fstat(fd, &st));
    printf("size %lld regular %d\n", (long long)st.st_size, S_ISREG(st.st_mode));
    close(fd);

    fd = open("hello.txt", O_WRONLY | O_APPEND);
    report("append", (int)write(fd, "more\n", 5));
    report("ftruncate to 5", ftruncate(fd, 5));
    close(fd);
    report("stat", stat("hello.txt", &st));
    printf("size %lld\n", (long long)st.st_size);

    report("mkdir sub", mkdir("sub", 0755));
    report("mkdir sub again", mkdir("sub", 0755));
    report("rename hello.txt to sub/moved.txt", rename("hello.txt", "sub/moved.txt"));
    report("open missing", open("hello.txt", O_RDONLY) < 0 ? -1 : 0);
    report("rmdir non-empty sub", rmdir("sub"));
    report("symlink", symlink("moved.txt", "sub/link"));
    char target[64] = {0};
    report("readlink", (int)readlink("sub/link", target, sizeof target - 1));
    printf("target: %s\n", target);
    report("open a directory for writing", open("sub", O_WRONLY) < 0 ? -1 : 0);
    report("open a file as a directory", open("sub/moved.txt", O_RDONLY | O_DIRECTORY) < 0 ? -1 : 0);

    DIR *d = opendir("sub");
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
    }
    closedir(d);
    printf("entries in sub: %d\n", entries);

    // Escapes: none may reach outside the preopened directory.
    report("open ../outside.txt", open("../outside.txt", O_RDONLY) < 0 ? -1 : 0);
    report("open /etc/passwd", open("/etc/passwd", O_RDONLY) < 0 ? -1 : 0);
    report("symlink to ..", symlink("../outside.txt", "escape"));
    report("open through the escaping symlink", open("escape", O_RDONLY) < 0 ? -1 : 0);
    report("mkdir ../made-outside", mkdir("../made-outside", 0755));

    report("unlink sub/link", unlink("sub/link"));
    report("unlink sub/moved.txt", unlink("sub/moved.txt"));
    report("unlink escape", unlink("escape"));
    report("rmdir sub", rmdir("sub"));
    report("unlink missing", unlink("nothing-here"));
    return 0;
}
