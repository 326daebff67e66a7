// Prints a numbered line every 10 ms, flushed, forever, and reads nothing: its output
// shows whether it runs.
#include <stdio.h>
#include <time.h>

int main(void) {
    for (long i = 0;; i++) {
        printf("tick %ld\n", i);
        fflush(stdout);
        struct timespec wait = {0, 10000000};
        nanosleep(&wait, NULL);
    }
}
