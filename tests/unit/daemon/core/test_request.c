/* core/request.c: one allocation holding the request and its key, id and payload bytes. */
#include "daemon/core/request.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_req_new_holds_key_and_id(void **state)
{
    px_req_t *r = px_req_new("user-9", 6, "\"id-1\"", 6, "{\"a\":1}", 7);

    assert_non_null(r);
    assert_int_equal(r->key_len, 6);
    assert_int_equal(r->id_len, 6);
    assert_memory_equal(px_req_key(r), "user-9", 6);
    assert_memory_equal(px_req_id(r), "\"id-1\"", 6);
    assert_int_equal(atomic_load(&r->state), PX_REQ_QUEUED);
    px_req_free(r);
    px_req_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_new_holds_key_and_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
