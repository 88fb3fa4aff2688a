/* A shared object that is not a parexd plugin: it exports a function, but not
 * PAREX_PLUGIN_ENTRY_SYMBOL. parexd must stop start-up with a message naming the missing symbol.
 * Used by tests/integration/test_handlers.py. */
int parex_plugin_entry_v0(void);
int parex_plugin_entry_v0(void)
{
    return 1;
}
