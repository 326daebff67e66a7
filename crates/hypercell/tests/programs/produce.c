// Writes MIB MiB of a deterministic pattern to stdout in 64 KiB writes (argument: MIB,
// default 16); a write that fails is reported on stderr and ends it with status 2.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 16;
    static uint8_t block[64 << 10];
    uint64_t at = 0;
    for (long b = 0; b < mib * 16; b++) {
        for (size_t i = 0; i < sizeof block; i++, at++) block[i] = (uint8_t)(at ^ (at >> 9) ^ (at >> 17));
        size_t done = 0;
        while (done < sizeof block) {
            ssize_t wrote = write(1, block + done, sizeof block - done);
            if (wrote < 0) {
                fprintf(stderr, "produce: write: %s\n", strerror(errno));
                return 2;
            }
            done += (size_t)wrote;
        }
    }
    return 0;
}
