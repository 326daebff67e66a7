#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

// Reads stdin to its end in 64 KiB reads and prints how many bytes came and the sum
// of their 64-bit words: a consumer for measuring the pipe rather than the programs
// on it.

int main(void) {
    static uint8_t block[64 << 10];
    uint64_t sum = 0, bytes = 0;
    size_t filled = 0;
    ssize_t got;
    while ((got = read(0, block + filled, sizeof block - filled)) > 0) {
        filled += (size_t)got;
        bytes += (uint64_t)got;
        size_t words = filled / 8;
        for (size_t i = 0; i < words; i++) {
            uint64_t word;
            memcpy(&word, block + 8 * i, 8);
            sum += word;
        }
        memmove(block, block + 8 * words, filled - 8 * words);
        filled -= 8 * words;
    }
    printf("bytes %" PRIu64 " sum %016" PRIx64 "\n", bytes, sum);
    return got < 0 ? 1 : 0;
}
