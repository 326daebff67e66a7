// Prints "step N" for STEPS steps, each after writing the next 64 KiB (wrapping) of a
// buffer of MIB MiB with a pattern of the step, 1.25 ms apart (51 MiB/s); then
// "hash H", FNV-1a of the buffer. Its output is the same however the cell is paused,
// snapshotted or moved meanwhile. Arguments: STEPS MIB [stdin]; with `stdin`, it reads its stdin to the end
// after the steps and says how many bytes it read.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 1000;
    size_t size = (size_t)(argc > 2 ? atol(argv[2]) : 16) << 20;
    uint8_t *buffer = calloc(size, 1);
    if (!buffer) return 1;
    size_t chunk = 64 << 10, at = 0;
    for (long i = 0; i < steps; i++) {
        for (size_t j = 0; j < chunk; j += 64) buffer[(at + j) % size] = (uint8_t)(i * 31 + j / 64);
        at = (at + chunk) % size;
        printf("step %ld\n", i);
        fflush(stdout);
        struct timespec wait = {0, 1250000};
        nanosleep(&wait, NULL);
    }
    if (argc > 3) {
        size_t bytes = 0;
        char block[4096];
        size_t got;
        while ((got = fread(block, 1, sizeof block, stdin)) > 0) bytes += got;
        printf("stdin %zu\n", bytes);
    }
    uint64_t hash = 1469598103934665603ULL;
    for (size_t k = 0; k < size; k++) {
        hash ^= buffer[k];
        hash *= 1099511628211ULL;
    }
    printf("hash %016llx\n", (unsigned long long)hash);
    return 0;
}
