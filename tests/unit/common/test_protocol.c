/* Unit tests for protocol.c: one request line in, one response line out. Every class of invalid
 * line gets its code, valid lines get their defaults, and every formatted response parses back
 * as one JSON object carrying the fields the README promises. */
#include "common/protocol.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* Parses text (a C string, no '\n') and returns the line; the caller frees it. */
static px_line_t parse(const char *text)
{
    px_line_t l;

    px_line_parse(&l, text, strlen(text));
    return l;
}

static void expect_invalid(const char *text, enum px_invalid code)
{
    px_line_t l = parse(text);

    if (l.kind != PX_LINE_INVALID || l.code != code)
        fail_msg("line %s: got kind %d code %s, want invalid/%s", text, (int)l.kind,
                 l.kind == PX_LINE_INVALID ? px_invalid_code(l.code) : "-", px_invalid_code(code));
    /* A person can act on it: there is always a message. */
    assert_true(strlen(l.message) > 10);
    px_line_free(&l);
}

/* Each line must be invalid/bad_field with a message naming field ("'key'"), and echo no id:
 * none of them carries a usable one. */
static void expect_bad_field(const char *const *lines, size_t n, const char *field)
{
    for (size_t i = 0; i < n; i++) {
        px_line_t l = parse(lines[i]);
        assert_int_equal(l.kind, PX_LINE_INVALID);
        if (l.code != PX_INV_BAD_FIELD)
            fail_msg("%s: code %s, want bad_field", lines[i], px_invalid_code(l.code));
        assert_null(l.id);
        assert_non_null(strstr(l.message, field));
        px_line_free(&l);
    }
}

static void test_invalid_codes_named(void **state)
{
    assert_string_equal(px_invalid_code(PX_INV_BAD_JSON), "bad_json");
    assert_string_equal(px_invalid_code(PX_INV_NOT_AN_OBJECT), "not_an_object");
    assert_string_equal(px_invalid_code(PX_INV_MISSING_KEY), "missing_key");
    assert_string_equal(px_invalid_code(PX_INV_BAD_FIELD), "bad_field");
    assert_string_equal(px_invalid_code(PX_INV_LINE_TOO_LONG), "line_too_long");
    assert_string_equal(px_invalid_code(PX_INV_UNKNOWN_OP), "unknown_op");
}

static void test_bad_json(void **state)
{
    expect_invalid("not json", PX_INV_BAD_JSON);
    expect_invalid("{", PX_INV_BAD_JSON);
    expect_invalid("{\"key\":\"a\"", PX_INV_BAD_JSON);
    expect_invalid("{\"key\":\"a\"} trailing", PX_INV_BAD_JSON);
    expect_invalid("{'key':'a'}", PX_INV_BAD_JSON);
    /* Duplicate members are ambiguous: rejected rather than guessed. */
    expect_invalid("{\"key\":\"a\",\"key\":\"b\"}", PX_INV_BAD_JSON);
    /* Invalid UTF-8 inside a string. */
    expect_invalid("{\"key\":\"\xff\xfe\"}", PX_INV_BAD_JSON);
    /* A NUL inside a string. */
    expect_invalid("{\"key\":\"a\\u0000b\"}", PX_INV_BAD_JSON);
}

static void test_bad_json_has_no_id(void **state)
{
    px_line_t l = parse("{\"id\":7,\"key\":");

    assert_int_equal(l.kind, PX_LINE_INVALID);
    assert_int_equal(l.code, PX_INV_BAD_JSON);
    assert_null(l.id);
    px_line_free(&l);
}

static void test_not_an_object_array(void **state)
{
    expect_invalid("[]", PX_INV_NOT_AN_OBJECT);
    expect_invalid("[{\"key\":\"a\"}]", PX_INV_NOT_AN_OBJECT);
}

/* A JSON scalar is valid JSON (RFC 8259 allows any value as a text), just not an object: the
 * README's table says bad_json is "not JSON" and not_an_object is "JSON, but not an object". */
static void test_not_an_object_scalar(void **state)
{
    expect_invalid("42", PX_INV_NOT_AN_OBJECT);
    expect_invalid("\"key\"", PX_INV_NOT_AN_OBJECT);
    expect_invalid("null", PX_INV_NOT_AN_OBJECT);
    expect_invalid("true", PX_INV_NOT_AN_OBJECT);
}

static void test_missing_key(void **state)
{
    px_line_t l;

    expect_invalid("{}", PX_INV_MISSING_KEY);
    expect_invalid("{\"op\":\"echo\",\"payload\":1}", PX_INV_MISSING_KEY);
    expect_invalid("{\"Key\":\"a\"}", PX_INV_MISSING_KEY); /* names are case-sensitive */

    /* A valid id is still read, so the answer can carry it. */
    l = parse("{\"id\":\"req-1\",\"op\":\"echo\"}");
    assert_int_equal(l.kind, PX_LINE_INVALID);
    assert_int_equal(l.code, PX_INV_MISSING_KEY);
    assert_non_null(l.id);
    assert_string_equal(json_string_value(l.id), "req-1");
    assert_non_null(strstr(l.message, "'key'"));
    px_line_free(&l);
}

static char *repeat(char *buf, const char *unit, int times)
{
    buf[0] = '\0';
    for (int i = 0; i < times; i++)
        strcat(buf, unit);
    return buf;
}

static void test_key_length_limits(void **state)
{
    char key[600], line[700];
    px_line_t l;

    /* 0 bytes */
    expect_invalid("{\"key\":\"\"}", PX_INV_BAD_FIELD);

    /* 256 bytes: the longest key. */
    snprintf(line, sizeof line, "{\"key\":\"%s\"}", repeat(key, "k", 256));
    l = parse(line);
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_int_equal(l.key_len, 256);
    assert_memory_equal(l.key, key, 256);
    px_line_free(&l);

    /* 257 bytes */
    snprintf(line, sizeof line, "{\"key\":\"%s\"}", repeat(key, "k", 257));
    l = parse(line);
    assert_int_equal(l.kind, PX_LINE_INVALID);
    assert_int_equal(l.code, PX_INV_BAD_FIELD);
    assert_non_null(strstr(l.message, "'key'"));
    assert_non_null(strstr(l.message, "257"));
    px_line_free(&l);

    /* The limit is in bytes, not characters: 128 x "é" is 256 bytes, 129 x is 258. */
    snprintf(line, sizeof line, "{\"key\":\"%s\"}", repeat(key, "\xc3\xa9", 128));
    l = parse(line);
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_int_equal(l.key_len, 256);
    px_line_free(&l);
    snprintf(line, sizeof line, "{\"key\":\"%s\"}", repeat(key, "\xc3\xa9", 129));
    expect_invalid(line, PX_INV_BAD_FIELD);

    /* A 1-byte key is fine; escapes count as the bytes they stand for. */
    l = parse("{\"key\":\"\\u00e9\"}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_int_equal(l.key_len, 2);
    assert_memory_equal(l.key, "\xc3\xa9", 2);
    px_line_free(&l);
}

static void test_key_wrong_type(void **state)
{
    static const char *const lines[] = {
        "{\"key\":1}",  "{\"key\":1.5}",           "{\"key\":null}",    "{\"key\":true}",
        "{\"key\":[]}", "{\"key\":{\"a\":\"b\"}}", "{\"key\":[\"a\"]}",
    };

    expect_bad_field(lines, sizeof lines / sizeof lines[0], "'key'");
}

static void test_bad_id_types(void **state)
{
    static const char *const lines[] = {
        "{\"key\":\"a\",\"id\":1.5}",   "{\"key\":\"a\",\"id\":true}",
        "{\"key\":\"a\",\"id\":false}", "{\"key\":\"a\",\"id\":null}",
        "{\"key\":\"a\",\"id\":[1]}",   "{\"key\":\"a\",\"id\":{}}",
    };

    /* An unusable id is not echoed (expect_bad_field checks). */
    expect_bad_field(lines, sizeof lines / sizeof lines[0], "'id'");
}

static void test_good_ids(void **state)
{
    px_line_t l;

    l = parse("{\"key\":\"a\",\"id\":\"x-1\"}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_true(json_is_string(l.id));
    assert_string_equal(json_string_value(l.id), "x-1");
    px_line_free(&l);

    l = parse("{\"key\":\"a\",\"id\":-9007199254740993}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_true(json_is_integer(l.id));
    assert_true(json_integer_value(l.id) == -9007199254740993LL);
    px_line_free(&l);

    l = parse("{\"key\":\"a\",\"id\":\"\"}"); /* an empty string is still a string */
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_non_null(l.id);
    px_line_free(&l);

    l = parse("{\"key\":\"a\"}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_null(l.id); /* absent: the connection assigns one */
    px_line_free(&l);
}

static void test_op_not_a_string(void **state)
{
    static const char *const lines[] = {
        "{\"key\":\"a\",\"op\":1}",          "{\"key\":\"a\",\"op\":null}",
        "{\"key\":\"a\",\"op\":[\"echo\"]}", "{\"key\":\"a\",\"op\":{\"name\":\"echo\"}}",
        "{\"key\":\"a\",\"op\":true}",
    };

    expect_bad_field(lines, sizeof lines / sizeof lines[0], "'op'");
}

static void test_defaults(void **state)
{
    px_line_t l = parse("{\"key\":\"user-1\"}");

    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_int_equal(l.key_len, 6);
    assert_memory_equal(l.key, "user-1", 6);
    assert_string_equal(l.op, "echo");
    assert_non_null(l.payload);
    assert_true(json_is_null(l.payload));
    assert_null(l.control);
    px_line_free(&l);
}

static void test_fields_and_unknown_fields(void **state)
{
    px_line_t l = parse("{\"v\":2,\"key\":\"k\",\"op\":\"sleep\",\"payload\":{\"ms\":5},"
                        "\"trace\":{\"x\":[1,2]},\"id\":3}");

    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_string_equal(l.op, "sleep");
    assert_true(json_is_object(l.payload));
    assert_int_equal(json_integer_value(json_object_get(l.payload, "ms")), 5);
    assert_int_equal(json_integer_value(l.id), 3);
    px_line_free(&l);

    /* Any JSON value is a payload, including an explicit null and scalars. */
    l = parse("{\"key\":\"k\",\"payload\":\"text\"}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_string_equal(json_string_value(l.payload), "text");
    px_line_free(&l);
    l = parse("{\"key\":\"k\",\"payload\":null}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_true(json_is_null(l.payload));
    px_line_free(&l);

    /* Whitespace around the object is fine. */
    l = parse("  {\"key\":\"k\"}\t");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    px_line_free(&l);

    /* An unknown op name parses; the registry, not the parser, decides unknown_op. */
    l = parse("{\"key\":\"k\",\"op\":\"no-such-op\"}");
    assert_int_equal(l.kind, PX_LINE_REQUEST);
    assert_string_equal(l.op, "no-such-op");
    px_line_free(&l);
}

static void test_control_lines(void **state)
{
    px_line_t l;

    l = parse("{\"control\":\"stats\"}");
    assert_int_equal(l.kind, PX_LINE_CONTROL);
    assert_string_equal(l.control, "stats");
    assert_null(l.id);
    px_line_free(&l);

    l = parse("{\"control\":\"stats\",\"id\":\"s1\"}");
    assert_int_equal(l.kind, PX_LINE_CONTROL);
    assert_string_equal(json_string_value(l.id), "s1");
    px_line_free(&l);

    /* A control line needs no key; an unknown name still parses (the connection answers it). */
    l = parse("{\"control\":\"bogus\"}");
    assert_int_equal(l.kind, PX_LINE_CONTROL);
    assert_string_equal(l.control, "bogus");
    px_line_free(&l);

    l = parse("{\"control\":1}");
    assert_int_equal(l.kind, PX_LINE_INVALID);
    assert_int_equal(l.code, PX_INV_BAD_FIELD);
    assert_non_null(strstr(l.message, "'control'"));
    px_line_free(&l);

    /* A bad id on a control line is still a bad id. */
    expect_invalid("{\"control\":\"stats\",\"id\":1.5}", PX_INV_BAD_FIELD);
}

static void test_line_invalid_formats(void **state)
{
    px_line_t l = parse("{\"key\":\"a\"}");

    px_line_invalid(&l, PX_INV_UNKNOWN_OP, "op '%s' is not a handler here", "zap");
    assert_int_equal(l.kind, PX_LINE_INVALID);
    assert_int_equal(l.code, PX_INV_UNKNOWN_OP);
    assert_string_equal(l.message, "op 'zap' is not a handler here");
    px_line_free(&l);
}

/* ---- responses ---- */

/* Formats r, checks it is exactly one '\n'-terminated line, and parses it back. */
static json_t *format_and_parse(const px_resp_t *r)
{
    px_buf_t b = {0};
    json_error_t err;
    json_t *o;

    assert_int_equal(px_resp_format(&b, r), 0);
    assert_true(b.len > 2);
    assert_int_equal(b.data[b.len - 1], '\n');
    assert_null(memchr(b.data, '\n', b.len - 1));
    o = json_loadb(b.data, b.len - 1, JSON_REJECT_DUPLICATES, &err);
    if (!o)
        fail_msg("response does not parse: %s: %.*s", err.text, (int)b.len, b.data);
    assert_true(json_is_object(o));
    px_buf_free(&b);
    return o;
}

static void test_resp_ok(void **state)
{
    json_t *result = json_pack("{s:s, s:[i,i], s:n}", "name", "x\"y", "list", 1, 2, "nothing");
    px_resp_t r = {.id = "\"abc\"",
                   .id_len = 5,
                   .status = "ok",
                   .worker = 3,
                   .result = result,
                   .queue_ms = 1.25,
                   .run_ms = 0.5};
    json_t *o = format_and_parse(&r);

    assert_string_equal(json_string_value(json_object_get(o, "id")), "abc");
    assert_string_equal(json_string_value(json_object_get(o, "status")), "ok");
    assert_int_equal(json_integer_value(json_object_get(o, "worker")), 3);
    assert_true(json_is_number(json_object_get(o, "queue_ms")));
    assert_true(json_is_number(json_object_get(o, "run_ms")));
    assert_float_equal(json_number_value(json_object_get(o, "queue_ms")), 1.25, 0.001);
    assert_float_equal(json_number_value(json_object_get(o, "run_ms")), 0.5, 0.001);
    assert_true(json_equal(json_object_get(o, "result"), result));
    assert_null(json_object_get(o, "error"));
    json_decref(o);
    json_decref(result);
}

static void test_resp_ok_null_result_and_integer_id(void **state)
{
    px_resp_t r = {.id = "9223372036854775807",
                   .id_len = 19,
                   .status = "ok",
                   .worker = 0,
                   .result = NULL,
                   .queue_ms = 0,
                   .run_ms = 0};
    px_buf_t b = {0};
    json_t *o = format_and_parse(&r);

    /* The result member is present and null, not missing. */
    assert_non_null(json_object_get(o, "result"));
    assert_true(json_is_null(json_object_get(o, "result")));
    assert_int_equal(json_integer_value(json_object_get(o, "worker")), 0);
    json_decref(o);

    /* The id is echoed as the exact text it came as, the largest int64 included. */
    assert_int_equal(px_resp_format(&b, &r), 0);
    assert_true(b.len > 26);
    assert_memory_equal(b.data, "{\"id\":9223372036854775807,", 26);
    px_buf_free(&b);
}

static void test_resp_failed(void **state)
{
    px_resp_t r = {.id = "7",
                   .id_len = 1,
                   .status = "failed",
                   .worker = 1,
                   .code = "handler_error",
                   .message = "disk \"full\"\nline2\t\x01 \\ done",
                   .queue_ms = 2,
                   .run_ms = 3};
    json_t *o = format_and_parse(&r), *err;

    assert_int_equal(json_integer_value(json_object_get(o, "id")), 7);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "failed");
    assert_int_equal(json_integer_value(json_object_get(o, "worker")), 1);
    assert_true(json_is_number(json_object_get(o, "queue_ms")));
    assert_true(json_is_number(json_object_get(o, "run_ms")));
    assert_null(json_object_get(o, "result"));
    err = json_object_get(o, "error");
    assert_true(json_is_object(err));
    assert_string_equal(json_string_value(json_object_get(err, "code")), "handler_error");
    /* Quotes, newline, tab, control bytes and backslashes survive the round trip. */
    assert_string_equal(json_string_value(json_object_get(err, "message")),
                        "disk \"full\"\nline2\t\x01 \\ done");
    json_decref(o);
}

static void test_resp_invalid_without_id_or_worker(void **state)
{
    px_resp_t r = {.id = NULL,
                   .status = "invalid",
                   .worker = -1,
                   .code = "bad_json",
                   .message = "line is not valid JSON",
                   .queue_ms = -1};
    json_t *o = format_and_parse(&r), *err;

    /* id is present and null; worker and the timings are absent. */
    assert_non_null(json_object_get(o, "id"));
    assert_true(json_is_null(json_object_get(o, "id")));
    assert_string_equal(json_string_value(json_object_get(o, "status")), "invalid");
    assert_null(json_object_get(o, "worker"));
    assert_null(json_object_get(o, "queue_ms"));
    assert_null(json_object_get(o, "run_ms"));
    assert_null(json_object_get(o, "result"));
    err = json_object_get(o, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "bad_json");
    assert_string_equal(json_string_value(json_object_get(err, "message")),
                        "line is not valid JSON");
    json_decref(o);
}

static void test_resp_rejected_with_extra(void **state)
{
    px_resp_t r = {.id = "\"q\"",
                   .id_len = 3,
                   .status = "rejected",
                   .worker = 5,
                   .code = "queue_full",
                   .message = "worker 5's queue is full",
                   .queue_ms = -1,
                   .extra = ",\"retry_after_ms\":12"};
    json_t *o = format_and_parse(&r);

    assert_string_equal(json_string_value(json_object_get(o, "status")), "rejected");
    assert_int_equal(json_integer_value(json_object_get(o, "worker")), 5);
    assert_int_equal(json_integer_value(json_object_get(o, "retry_after_ms")), 12);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "code")),
                        "queue_full");
    assert_null(json_object_get(o, "queue_ms"));
    json_decref(o);
}

/* Responses append: two in one buffer are two lines. */
static void test_resp_appends(void **state)
{
    px_resp_t a = {.id = "1", .id_len = 1, .status = "ok", .worker = -1, .queue_ms = -1};
    px_resp_t b = {.id = "2", .id_len = 1, .status = "ok", .worker = -1, .queue_ms = -1};
    px_buf_t buf = {0};
    char *nl;

    assert_int_equal(px_resp_format(&buf, &a), 0);
    assert_int_equal(px_resp_format(&buf, &b), 0);
    nl = memchr(buf.data, '\n', buf.len);
    assert_non_null(nl);
    assert_int_equal((size_t)(nl - buf.data) + 1 + (size_t)(nl - buf.data) + 1, buf.len);
    assert_memory_equal(buf.data, "{\"id\":1,", 8);
    assert_memory_equal(nl + 1, "{\"id\":2,", 8);
    px_buf_free(&buf);
}

static void test_json_append_any(void **state)
{
    px_buf_t b = {0};
    json_t *v = json_pack("{s:i}", "a", 1), *n = json_integer(-3);

    /* Any type, not only objects and arrays. */
    assert_int_equal(px_json_append(&b, json_null()), 0);
    assert_int_equal(px_json_append(&b, n), 0);
    assert_int_equal(px_json_append(&b, v), 0);
    assert_memory_equal(b.data, "null-3{\"a\":1}", b.len);
    assert_int_equal(b.len, strlen("null-3{\"a\":1}"));
    px_buf_free(&b);
    json_decref(v);
    json_decref(n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_codes_named),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_json_has_no_id),
        cmocka_unit_test(test_not_an_object_array),
        cmocka_unit_test(test_not_an_object_scalar),
        cmocka_unit_test(test_missing_key),
        cmocka_unit_test(test_key_length_limits),
        cmocka_unit_test(test_key_wrong_type),
        cmocka_unit_test(test_bad_id_types),
        cmocka_unit_test(test_good_ids),
        cmocka_unit_test(test_op_not_a_string),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_fields_and_unknown_fields),
        cmocka_unit_test(test_control_lines),
        cmocka_unit_test(test_line_invalid_formats),
        cmocka_unit_test(test_resp_ok),
        cmocka_unit_test(test_resp_ok_null_result_and_integer_id),
        cmocka_unit_test(test_resp_failed),
        cmocka_unit_test(test_resp_invalid_without_id_or_worker),
        cmocka_unit_test(test_resp_rejected_with_extra),
        cmocka_unit_test(test_resp_appends),
        cmocka_unit_test(test_json_append_any),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
