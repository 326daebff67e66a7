#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

// Writes MIB MiB to stdout in 64 KiB writes (argument: MIB, default 16), doing as
// little else as it can: one block of a fixed pattern, its first word the block's
// number. A source for measuring the pipe rather than the programs on it.

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 16;
    static uint64_t block[(64 << 10) / 8];
    for (size_t i = 0; i < sizeof block / 8; i++) block[i] = i * 0x9e3779b97f4a7c15u;
    for (long b = 0; b < mib * 16; b++) {
        block[0] = (uint64_t)b;
        const char *from = (const char *)block;
        size_t done = 0;
        while (done < sizeof block) {
            ssize_t wrote = write(1, from + done, sizeof block - done);
            if (wrote < 0) {
                fprintf(stderr, "source: write: %s\n", strerror(errno));
                return 2;
            }
            done += (size_t)wrote;
        }
    }
    return 0;
}
