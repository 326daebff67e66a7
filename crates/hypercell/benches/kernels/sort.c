// Sorting 5M (-DCOUNT=N for fewer) pseudo-random 32-bit integers with the C library's qsort.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef COUNT
#define COUNT 5000000
#endif

static int compare(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int main(void) {
    uint32_t *values = malloc(sizeof(uint32_t) * COUNT);
    uint32_t state = 2463534242u;
    for (int i = 0; i < COUNT; i++) {
        state ^= state << 13; state ^= state >> 17; state ^= state << 5;
        values[i] = state;
    }
    qsort(values, COUNT, sizeof(uint32_t), compare);
    uint64_t check = 0;
    for (int i = 0; i < COUNT; i += 1000) check = check * 31 + values[i];
    printf("sort %u %u %016llx\n", values[0], values[COUNT - 1], (unsigned long long)check);
    return 0;
}
