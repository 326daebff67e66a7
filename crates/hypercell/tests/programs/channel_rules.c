// Tries what a program may and may not do with its named channels (`requests`, which
// it writes, and `replies`, which it reads), printing one line per call: "ok" when it
// succeeded, else the errno it got. Then writes "hello" to `requests`, closes it, and
// copies `replies` to stdout.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *name(int err) {
    switch (err) {
    case 0: return "ok";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EBUSY: return "EBUSY";
    case EBADF: return "EBADF";
    case ESPIPE: return "ESPIPE";
    case ENOTDIR: return "ENOTDIR";
    case EEXIST: return "EEXIST";
    case ENOTCAPABLE: return "ENOTCAPABLE";
    default: return strerror(err);
    }
}

static void check(const char *what, int succeeded) {
    printf("%s: %s\n", what, name(succeeded ? 0 : errno));
    errno = 0;
}

int main(void) {
    DIR *dir = opendir("/channels");
    if (dir) {
        struct dirent *entry;
        while ((entry = readdir(dir)))
            if (entry->d_name[0] != '.') printf("listed %s\n", entry->d_name);
        closedir(dir);
    }
    check("open missing", open("/channels/missing", O_RDONLY) >= 0);
    check("create missing", open("/channels/missing", O_WRONLY | O_CREAT, 0644) >= 0);
    check("open the writing end to read", open("/channels/requests", O_RDONLY) >= 0);
    check("open as a directory", open("/channels/requests", O_WRONLY | O_DIRECTORY) >= 0);
    int out = open("/channels/requests", O_WRONLY);
    check("open requests", out >= 0);
    check("open requests again", open("/channels/requests", O_WRONLY) >= 0);
    char byte;
    check("read requests", read(out, &byte, 1) >= 0);
    check("seek requests", lseek(out, 0, SEEK_SET) >= 0);
    struct stat st;
    check("stat requests", fstat(out, &st) == 0);
    int in = open("/channels/replies", O_RDONLY);
    check("open replies", in >= 0);
    check("write replies", write(in, "x", 1) >= 0);
    check("write requests", write(out, "hello\n", 6) == 6);
    check("close requests", close(out) == 0);
    check("write requests once closed", write(out, "x", 1) >= 0);
    check("open requests once closed", open("/channels/requests", O_WRONLY) >= 0);
    char buf[256];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) fwrite(buf, 1, n, stdout);
    check("read replies to its end", n == 0);
    return 0;
}
