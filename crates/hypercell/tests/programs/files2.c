// More file calls and their error cases: renumbering, flags, times, hard links,
// allocation, and calls on descriptors that are not open.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <wasi/api.h>

static void report(const char *what, int rc) {
    if (rc < 0) printf("%s: errno %d (%s)\n", what, errno, strerror(errno));
    else printf("%s: ok %d\n", what, rc);
}

// fd_renumber, which wasi-libc offers no POSIX wrapper for.
static int renumber(int from, int to) {
    __wasi_errno_t e = __wasi_fd_renumber(from, to);
    if (e != 0) { errno = e; return -1; }
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "sandbox";
    if (chdir(dir) != 0) { printf("chdir: errno %d\n", errno); return 1; }

    int a = open("a.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
    int b = open("b.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
    report("write a", (int)write(a, "aaaa", 4));
    report("write b", (int)write(b, "bb", 2));
    report("renumber a over b", renumber(a, b));
    char buf[16] = {0};
    report("pread through b", (int)pread(b, buf, sizeof buf - 1, 0));
    printf("b now reads: %s\n", buf);
    report("read from old a", (int)read(a, buf, 1));
    report("renumber from a closed descriptor", renumber(a, b));
    report("renumber onto a closed descriptor", renumber(b, 42));

    int flags = fcntl(b, F_GETFL);
    report("F_GETFL", flags < 0 ? -1 : (flags & O_APPEND) ? 1 : 0);
    report("F_SETFL O_APPEND", fcntl(b, F_SETFL, flags | O_APPEND));
    report("append write", (int)write(b, "zz", 2));
    struct stat st;
    fstat(b, &st);
    printf("size after append: %lld\n", (long long)st.st_size);

    struct timespec times[2] = {{1000000000, 0}, {1200000000, 500}};
    report("futimens", futimens(b, times));
    fstat(b, &st);
    printf("mtime %lld.%09ld atime %lld\n", (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (long long)st.st_atim.tv_sec);
    struct timespec later[2] = {{1300000000, 0}, {1400000000, 0}};
    report("utimensat", utimensat(AT_FDCWD, "a.txt", later, 0));
    stat("a.txt", &st);
    printf("mtime %lld\n", (long long)st.st_mtim.tv_sec);

    report("link", link("a.txt", "hard.txt"));
    stat("a.txt", &st);
    printf("nlink %lld\n", (long long)st.st_nlink);
    report("link onto an existing name", link("a.txt", "hard.txt"));
    report("link a missing file", link("missing", "other"));
    report("link out of the sandbox", link("a.txt", "../outside-link"));

    report("fsync", fsync(b));
    report("fdatasync", fdatasync(b));
    report("posix_fadvise", posix_fadvise(b, 0, 10, POSIX_FADV_SEQUENTIAL) == 0 ? 0 : -1);
    report("posix_fallocate", posix_fallocate(b, 0, 100) == 0 ? 0 : (errno = posix_fallocate(b, 0, 100), -1));
    report("fsync a closed descriptor", fsync(77));
    report("lseek a closed descriptor", (int)lseek(77, 0, SEEK_SET));
    report("ftruncate a directory", ftruncate(open(".", O_RDONLY | O_DIRECTORY), 0));
    report("read a directory", (int)read(open(".", O_RDONLY | O_DIRECTORY), buf, 4));

    close(b);
    unlink("a.txt");
    unlink("b.txt");
    unlink("hard.txt");
    return 0;
}
