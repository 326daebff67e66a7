// Clocks, sleeping and random numbers.
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static long long ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(void) {
    long long start = ns(CLOCK_MONOTONIC);
    struct timespec nap = {0, 25 * 1000 * 1000};
    nanosleep(&nap, NULL);
    long long slept = ns(CLOCK_MONOTONIC) - start;
    printf("slept at least 25 ms: %s\n", slept >= 25000000 ? "yes" : "no");
    printf("realtime after 2020: %s\n", time(NULL) > 1577836800 ? "yes" : "no");
    printf("cpu clock runs: %s\n", ns(CLOCK_PROCESS_CPUTIME_ID) > 0 ? "yes" : "no");
    unsigned char a[32] = {0}, b[32] = {0};
    getentropy(a, sizeof a);
    getentropy(b, sizeof b);
    int same = 1, zero = 1;
    for (int i = 0; i < 32; i++) {
        same &= a[i] == b[i];
        zero &= a[i] == 0;
    }
    printf("entropy differs: %s\n", !same && !zero ? "yes" : "no");
    return 0;
}
