// Reads stdin to its end in 64 KiB reads and prints how many bytes came and their
// FNV-1a hash.
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    static uint8_t block[64 << 10];
    uint64_t hash = 0xcbf29ce484222325u, bytes = 0;
    ssize_t got;
    while ((got = read(0, block, sizeof block)) > 0) {
        for (ssize_t i = 0; i < got; i++) hash = (hash ^ block[i]) * 0x100000001b3u;
        bytes += (uint64_t)got;
    }
    printf("bytes %" PRIu64 " hash %016" PRIx64 "\n", bytes, hash);
    return got < 0 ? 1 : 0;
}
