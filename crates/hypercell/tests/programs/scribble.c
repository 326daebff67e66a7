// Writes every page of a buffer of MIB MiB, PASSES times over, as fast as it can (far
// faster than a link carries memory), printing "pass N" after every hundredth pass;
// then "hash H", FNV-1a of the buffer. Its output is the same however the cell is
// paused or moved meanwhile. Arguments: PASSES MIB.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long passes = argc > 1 ? atol(argv[1]) : 1000;
    size_t size = (size_t)(argc > 2 ? atol(argv[2]) : 16) << 20;
    uint8_t *buffer = calloc(size, 1);
    if (!buffer) return 1;
    for (long pass = 1; pass <= passes; pass++) {
        for (size_t i = 0; i < size; i += 512) buffer[i] = (uint8_t)(pass * 7 + i / 512);
        if (pass % 100 == 0) {
            printf("pass %ld\n", pass);
            fflush(stdout);
        }
    }
    uint64_t hash = 1469598103934665603ULL;
    for (size_t i = 0; i < size; i++) hash = (hash ^ buffer[i]) * 1099511628211ULL;
    printf("hash %016llx\n", (unsigned long long)hash);
    return 0;
}
