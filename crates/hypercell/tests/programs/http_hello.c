// A wasi:http proxy component in C, over bindings wit-bindgen generates for the
// world the guest serves: it answers with what it was asked (method, path, a header,
// the body's length), how many requests its memory has seen (1 in a fresh cell), and a
// status and header of its own. `/trap` traps; `/loop` spins forever; `/silent`
// returns without a response;
// `/outgoing` tries an outgoing request and says how it was refused; `/big` answers
// 3 MiB, written as wasi:io's check-write allows; `/abandon` drops its body unfinished;
// every response carries a field named `status`, which must not become the status.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler.h"

static int served;

static const char *method_name(const wasi_http_types_method_t *method) {
    static const char *names[] = {"GET", "HEAD", "POST", "PUT", "DELETE",
                                  "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    return method->tag < 9 ? names[method->tag] : "OTHER";
}

static void add_field(wasi_http_types_own_fields_t fields, const char *name, const char *value) {
    handler_string_t field_name;
    handler_string_set(&field_name, name);
    wasi_http_types_field_value_t field_value = {(uint8_t *)value, strlen(value)};
    wasi_http_types_header_error_t error;
    wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(fields), &field_name,
                                         &field_value, &error);
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
    served++;
    wasi_http_types_borrow_incoming_request_t incoming =
        wasi_http_types_borrow_incoming_request(request);
    wasi_http_types_method_t method;
    wasi_http_types_method_incoming_request_method(incoming, &method);
    handler_string_t path = {0};
    wasi_http_types_method_incoming_request_path_with_query(incoming, &path);
    if (path.len == 5 && !memcmp(path.ptr, "/trap", 5)) __builtin_trap();
    if (path.len == 5 && !memcmp(path.ptr, "/loop", 5))
        for (volatile unsigned spins = 0;; spins++) {
        }
    if (path.len == 7 && !memcmp(path.ptr, "/silent", 7)) return;
    int big = path.len == 4 && !memcmp(path.ptr, "/big", 4);
    char text[1024];
    int length = 0;
    if (path.len == 9 && !memcmp(path.ptr, "/outgoing", 9)) {
        wasi_http_types_own_outgoing_request_t outgoing =
            wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
        wasi_http_outgoing_handler_own_future_incoming_response_t future;
        wasi_http_outgoing_handler_error_code_t error;
        bool sent = wasi_http_outgoing_handler_handle(outgoing, NULL, &future, &error);
        length = snprintf(text, sizeof text, "outgoing %s, error %d\n",
                          sent ? "sent" : "refused", sent ? -1 : error.tag);
    }

    wasi_http_types_own_headers_t headers = wasi_http_types_method_incoming_request_headers(incoming);
    handler_string_t wanted;
    handler_string_set(&wanted, "x-name");
    wasi_http_types_list_field_value_t names;
    wasi_http_types_method_fields_get(wasi_http_types_borrow_fields(headers), &wanted, &names);

    size_t body_length = 0;
    wasi_http_types_own_incoming_body_t body;
    if (wasi_http_types_method_incoming_request_consume(incoming, &body)) {
        wasi_io_streams_own_input_stream_t stream;
        if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body),
                                                        &stream)) {
            for (;;) {
                handler_list_u8_t chunk;
                wasi_io_streams_stream_error_t error;
                if (!wasi_io_streams_method_input_stream_blocking_read(
                        wasi_io_streams_borrow_input_stream(stream), 1 << 16, &chunk, &error))
                    break;
                body_length += chunk.len;
                free(chunk.ptr);
            }
            wasi_io_streams_input_stream_drop_own(stream);
        }
        wasi_http_types_incoming_body_drop_own(body);
    }

    if (length == 0)
        length = snprintf(text, sizeof text,
                          "hello from a component: %s %.*s served=%d name=%.*s body=%zu\n",
                          method_name(&method), (int)path.len, (const char *)path.ptr, served,
                          names.len ? (int)names.ptr[0].len : 0,
                          names.len ? (const char *)names.ptr[0].ptr : "", body_length);
    fprintf(stderr, "handled %.*s\n", (int)path.len, (const char *)path.ptr);

    wasi_http_types_own_fields_t fields = wasi_http_types_constructor_fields();
    add_field(fields, "content-type", "text/plain");
    add_field(fields, "x-component", "c");
    add_field(fields, "status", "302");
    wasi_http_types_own_outgoing_response_t response =
        wasi_http_types_constructor_outgoing_response(fields);
    wasi_http_types_method_outgoing_response_set_status_code(
        wasi_http_types_borrow_outgoing_response(response), 201);
    wasi_http_types_own_outgoing_body_t out;
    wasi_http_types_method_outgoing_response_body(
        wasi_http_types_borrow_outgoing_response(response), &out);
    wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
    result.val.ok = response;
    wasi_http_types_static_response_outparam_set(response_out, &result);

    wasi_io_streams_own_output_stream_t stream;
    wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(out), &stream);
    wasi_io_streams_stream_error_t error;
    if (big) {
        // 3 MiB of a repeating alphabet, in the chunks check-write permits.
        static uint8_t chunk[4096];
        size_t total = 3 << 20, written = 0;
        while (written < total) {
            uint64_t allowed;
            if (!wasi_io_streams_method_output_stream_check_write(
                    wasi_io_streams_borrow_output_stream(stream), &allowed, &error))
                break;
            size_t n = total - written;
            if (n > sizeof chunk) n = sizeof chunk;
            if (n > allowed) n = allowed;
            for (size_t i = 0; i < n; i++) chunk[i] = 'a' + (written + i) % 26;
            handler_list_u8_t part = {chunk, n};
            if (!wasi_io_streams_method_output_stream_write(
                    wasi_io_streams_borrow_output_stream(stream), &part, &error))
                break;
            written += n;
        }
    } else {
        handler_list_u8_t contents = {(uint8_t *)text, (size_t)length};
        wasi_io_streams_method_output_stream_blocking_write_and_flush(
            wasi_io_streams_borrow_output_stream(stream), &contents, &error);
    }
    wasi_io_streams_output_stream_drop_own(stream);
    if (path.len == 8 && !memcmp(path.ptr, "/abandon", 8)) {
        wasi_http_types_outgoing_body_drop_own(out);
        return;
    }
    wasi_http_types_error_code_t finish_error;
    wasi_http_types_static_outgoing_body_finish(out, NULL, &finish_error);
}
