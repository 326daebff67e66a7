// Writes 1 GiB to stdout in 1 MiB pieces, flushing each; reports the first failure.
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    static char piece[1 << 20];
    memset(piece, 'a', sizeof piece);
    for (int i = 0; i < 1024; i++) {
        if (fwrite(piece, 1, sizeof piece, stdout) != sizeof piece || fflush(stdout) != 0) {
            fprintf(stderr, "write failed: %s\n", strerror(errno));
            return 7;
        }
    }
    return 0;
}
