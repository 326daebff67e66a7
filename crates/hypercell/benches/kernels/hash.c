// Integer hash loop: 400M rounds (-DROUNDS=N for fewer) of FNV-1a-style mixing, one long dependency chain.
#include <stdint.h>
#include <stdio.h>

#ifndef ROUNDS
#define ROUNDS 400000000ULL
#endif

int main(void) {
    uint64_t h = 1469598103934665603ULL;
    for (uint64_t i = 0; i < ROUNDS; i++) {
        h ^= i;
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    printf("hash %016llx\n", (unsigned long long)h);
    return 0;
}
