// Keeps notes in a 1 MiB table: for each line of stdin it appends the line and prints
// "N: LINE SUM", where SUM is a checksum of the whole table, so that any byte of its
// memory lost between lines shows.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static char notes[1 << 20];
static size_t used;

int main(void) {
    char line[256];
    unsigned n = 0;
    memset(notes, '.', sizeof notes);
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strlen(line);
        if (used + len > sizeof notes) {
            used = 0;
        }
        memcpy(notes + used, line, len);
        used += len;
        n++;
        uint32_t sum = 0;
        for (size_t i = 0; i < sizeof notes; i++) {
            sum = sum * 31 + (unsigned char)notes[i];
        }
        line[strcspn(line, "\n")] = 0;
        printf("%u: %s %08x\n", n, line, sum);
        fflush(stdout);
    }
    return 0;
}
