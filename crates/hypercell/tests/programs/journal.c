// Appends "entry N" to the file PATH, kept open the whole run, and prints "step N",
// for STEPS steps 2 ms apart; then "done". Arguments: STEPS PATH. Its file holds each
// entry once, in order, however the cell is paused, snapshotted or moved meanwhile.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long steps = argc > 1 ? atol(argv[1]) : 1000;
    FILE *journal = fopen(argc > 2 ? argv[2] : "journal.txt", "a");
    if (!journal) {
        perror("journal");
        return 1;
    }
    for (long i = 0; i < steps; i++) {
        fprintf(journal, "entry %ld\n", i);
        fflush(journal);
        printf("step %ld\n", i);
        fflush(stdout);
        struct timespec wait = {0, 2000000};
        nanosleep(&wait, NULL);
    }
    fclose(journal);
    printf("done\n");
    return 0;
}
