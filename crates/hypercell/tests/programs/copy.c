// Copies stdin to stdout in 64 KiB reads and writes.
#include <stdio.h>
#include <unistd.h>

int main(void) {
    static char buf[65536];
    ssize_t n;
    long long total = 0;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(1, buf + done, n - done);
            if (w <= 0) return 1;
            done += w;
        }
        total += n;
    }
    fprintf(stderr, "%lld bytes\n", total);
    return n < 0;
}
