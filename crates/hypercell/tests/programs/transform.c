// Copies stdin to stdout in 64 KiB reads, each byte b becoming 7b + 3 (mod 256).
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    static uint8_t block[64 << 10];
    ssize_t got;
    while ((got = read(0, block, sizeof block)) > 0) {
        for (ssize_t i = 0; i < got; i++) block[i] = (uint8_t)(block[i] * 7 + 3);
        ssize_t done = 0;
        while (done < got) {
            ssize_t wrote = write(1, block + done, (size_t)(got - done));
            if (wrote < 0) {
                perror("transform: write");
                return 2;
            }
            done += wrote;
        }
    }
    return got < 0 ? 1 : 0;
}
