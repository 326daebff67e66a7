// SQLite on a database file in a preopened directory: create, insert 100k rows in one
// transaction, query, close, reopen and query again.
#include <stdio.h>
#include "sqlite3.h"

static int query(sqlite3 *db, const char *label) {
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, "SELECT count(*), sum(value), min(name), max(name) FROM t WHERE id % 7 = 3", -1, &q, 0) != SQLITE_OK) {
        printf("%s: prepare failed: %s\n", label, sqlite3_errmsg(db));
        return 1;
    }
    if (sqlite3_step(q) == SQLITE_ROW)
        printf("%s: %d rows, sum %.1f, names %s .. %s\n", label, sqlite3_column_int(q, 0),
               sqlite3_column_double(q, 1), sqlite3_column_text(q, 2), sqlite3_column_text(q, 3));
    sqlite3_finalize(q);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "data/test.db";
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) { printf("open: %s\n", sqlite3_errmsg(db)); return 1; }
    if (sqlite3_exec(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL)", 0, 0, 0) != SQLITE_OK) {
        printf("create: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    sqlite3_exec(db, "BEGIN", 0, 0, 0);
    sqlite3_stmt *insert;
    sqlite3_prepare_v2(db, "INSERT INTO t (name, value) VALUES (?, ?)", -1, &insert, 0);
    char name[32];
    for (int i = 0; i < 100000; i++) {
        snprintf(name, sizeof name, "row-%06d", i * 7919 % 100003);
        sqlite3_bind_text(insert, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(insert, 2, i * 0.25);
        if (sqlite3_step(insert) != SQLITE_DONE) { printf("insert: %s\n", sqlite3_errmsg(db)); return 1; }
        sqlite3_reset(insert);
    }
    sqlite3_finalize(insert);
    if (sqlite3_exec(db, "COMMIT", 0, 0, 0) != SQLITE_OK) { printf("commit: %s\n", sqlite3_errmsg(db)); return 1; }
    if (query(db, "before close")) return 1;
    sqlite3_close(db);
    if (sqlite3_open(path, &db) != SQLITE_OK) { printf("reopen: %s\n", sqlite3_errmsg(db)); return 1; }
    if (query(db, "after reopen")) return 1;
    sqlite3_close(db);
    return 0;
}
