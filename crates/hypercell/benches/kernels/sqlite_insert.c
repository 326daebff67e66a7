// SQLite: insert 100k rows in one transaction into an in-memory database, then query.
#include <stdio.h>
#include "sqlite3.h"

static int check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        return 1;
    }
    return 0;
}

int main(void) {
    sqlite3 *db;
    if (check(sqlite3_open(":memory:", &db), db, "open")) return 1;
    sqlite3_exec(db, "PRAGMA temp_store=MEMORY", 0, 0, 0);
    if (check(sqlite3_exec(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL)", 0, 0, 0), db, "create")) return 1;
    sqlite3_exec(db, "BEGIN", 0, 0, 0);
    sqlite3_stmt *insert;
    sqlite3_prepare_v2(db, "INSERT INTO t (name, value) VALUES (?, ?)", -1, &insert, 0);
    char name[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(name, sizeof name, "row-%d", i * 7919 % 100003);
        sqlite3_bind_text(insert, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(insert, 2, i * 0.5);
        if (check(sqlite3_step(insert), db, "insert")) return 1;
        sqlite3_reset(insert);
    }
    sqlite3_finalize(insert);
    sqlite3_exec(db, "COMMIT", 0, 0, 0);
    sqlite3_exec(db, "CREATE INDEX t_name ON t (name)", 0, 0, 0);
    sqlite3_stmt *query;
    sqlite3_prepare_v2(db, "SELECT count(*), sum(value), max(name) FROM t WHERE name > 'row-5'", -1, &query, 0);
    if (sqlite3_step(query) == SQLITE_ROW)
        printf("sqlite %d %.1f %s\n", sqlite3_column_int(query, 0), sqlite3_column_double(query, 1), sqlite3_column_text(query, 2));
    sqlite3_finalize(query);
    sqlite3_close(db);
    return 0;
}
