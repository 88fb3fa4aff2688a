"""The man pages against the code, so they cannot drift from it:

- every page the build made renders, and `mandoc -T lint` reports nothing beyond the accepted
  warnings (scdoc's paragraph macros, see ACCEPTED_LINT);
- parexd.json(5) documents every config key the daemon accepts, with a default, a range and
  what SIGHUP does: the keys come from `parexd --print-config` when the binary has it; the
  defaults, ranges and SIGHUP rules from `parexd --print-manual` when it has that (the key
  table and SIGHUP row the binary renders from its own config table); without them, from the
  sources: the key table the config loader validates with (found by its shape under src/,
  wherever it moves), its defaults function and the reload's KEPT list. The page's defaults,
  numeric ranges and SIGHUP entries must equal the code's; every handler option the handler
  builders accept is documented too, and the page documents no key the daemon refuses;
- the integer handler options' ranges in parexd.json(5) are those the handler builders check;
- parexctl(1) names every subcommand and option of `parexctl --help`; parexd(8) and
  parex-bench(1) every option of their --help.

    python3 test_pages.py --man-dir DIR --source DIR --parexd PATH --parexctl PATH
                          --parex-bench PATH
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

ARGS = None

# mandoc -T lint -W warning messages kept: scdoc 1.11 opens every paragraph with .PP, also
# right after .SH and before an indented block; mandoc skips the redundant ones, and the
# rendering is the same with or without them.
ACCEPTED_LINT = ("skipping paragraph macro: PP empty", "skipping paragraph macro: PP after SH")
PAGES = ("parexd.8", "parexctl.1", "parex-bench.1", "parexd.json.5")


def render(page):
    """The page as plain text, lines unwrapped (a very wide terminal), overstrikes removed."""
    p = subprocess.run(["mandoc", "-T", "utf8", "-O", "width=1000",
                        os.path.join(ARGS.man_dir, page)], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("mandoc cannot render %s: %s" % (page, p.stderr))
    return re.sub(".\b", "", p.stdout)


def terms(text):
    """{term: the rest of its line} for the definition lines of a page ("       name (...)")."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^ {7}(\S+)(?: \((.*)\))?$", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def help_text(binary):
    p = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    return p.stdout + p.stderr


def sources(pattern):
    """Files under src/ whose text matches pattern (the code moves between folders)."""
    found = []
    for path in glob.glob(os.path.join(ARGS.source, "src", "**", "*.c"), recursive=True):
        with open(path, errors="replace") as f:
            text = f.read()
        if re.search(pattern, text):
            found.append((path, text))
    return found


ROW = re.compile(r'\{\s*"([a-z_]+)"\s*,\s*(K_[A-Z_]+)\s*,\s*F\((\w+)\)\s*,\s*([^,{}]+?)\s*,'
                 r'\s*([^,{}]+?)\s*\}')


def number(expr):
    """A table bound such as 1048576, 0.01, 0777 or 64 << 20."""
    expr = expr.strip()
    m = re.fullmatch(r"(\d+)\s*<<\s*(\d+)", expr)
    if m:
        return int(m.group(1)) << int(m.group(2))
    if re.fullmatch(r"0[0-7]+", expr):
        return int(expr, 8)
    return float(expr) if "." in expr else int(expr)


def config_table():
    """{key: (kind, field, min, max)} from the table the config loader validates with."""
    files = sources(ROW.pattern)
    if len(files) != 1:
        raise AssertionError("expected one source file under src/ with the config key table "
                             "({\"name\", K_KIND, F(field), min, max} rows), found %s; if the "
                             "table changed shape, update ROW in this test"
                             % [p for p, _ in files])
    path, text = files[0]
    return path, text, {m.group(1): (m.group(2), m.group(3), number(m.group(4)),
                                     number(m.group(5))) for m in ROW.finditer(text)}


def code_defaults(text):
    """{field: number} from the defaults function: c->field = N; (memset leaves the rest 0)."""
    return {m.group(1): number(m.group(2))
            for m in re.finditer(r"c->(\w+)\s*=\s*([0-9][0-9.]*)\s*;", text)}


def numeric_range(text):
    m = re.fullmatch(r"(-?[0-9.]+)\s*(?:–|\.\.| to )\s*(-?[0-9.]+)", text.strip())
    return (number(m.group(1)), number(m.group(2))) if m else None


def manual_facts(text):
    """From `parexd --print-manual`: its key table rows and its SIGHUP row."""
    facts = {}
    for m in re.finditer(r"^\| `(\w+)` \| `(.*?)` \| (.*?) \|", text, re.M):
        facts[m.group(1)] = {"default": m.group(2), "range": numeric_range(m.group(3))}
    m = re.search(r"reload the config file: (.*?) take effect at once; (.*?) are kept", text)
    if not facts or not m:
        raise AssertionError("parexd --print-manual: no key table or SIGHUP row in:\n" + text)
    for key in re.findall(r"`(\w+)`", m.group(1)):
        facts[key]["sighup"] = "applied"
    for key in re.findall(r"`(\w+)`", m.group(2)):
        facts[key]["sighup"] = "kept"
    return facts


def config_facts():
    """{key: {default, range, sighup}} as the code states them, and where they came from: the
    binary's own manual table when it has one, else the loader's table, the defaults function
    and the reload's list of kept keys in the sources."""
    if "--print-manual" in help_text(ARGS.parexd):
        p = subprocess.run([ARGS.parexd, "--print-manual"], capture_output=True, text=True,
                           timeout=30)
        if p.returncode != 0:
            raise AssertionError("parexd --print-manual failed: " + p.stderr)
        return manual_facts(p.stdout), "parexd --print-manual"
    path, text, table = config_table()
    defaults = code_defaults(text)
    kept = set()
    for _, src in sources(r'KEPT\(\s*\w+\s*,\s*"'):
        kept.update(re.findall(r'KEPT\(\s*\w+\s*,\s*"(\w+)"\s*\)', src))
    if not kept:
        raise AssertionError("no KEPT(field, \"key\") list of the reload found under src/; if "
                             "the reload changed shape, update this test")
    facts = {}
    for key, (kind, field, lo, hi) in table.items():
        numeric = kind in ("K_INT", "K_DOUBLE")
        facts[key] = {"default": str(defaults.get(field, 0)) if numeric else None,
                      "range": (lo, hi) if numeric else None,
                      "sighup": "kept" if key in kept else "applied"}
    return facts, os.path.relpath(path, ARGS.source)


def accepted_keys():
    """The top-level keys the daemon accepts, and where that answer came from."""
    if "--print-config" in help_text(ARGS.parexd):
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write("{}")
            f.flush()
            p = subprocess.run([ARGS.parexd, "--config", f.name, "--print-config"],
                               capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise AssertionError("parexd --print-config failed: " + p.stderr)
        return set(json.loads(p.stdout)), "parexd --print-config"
    facts, origin = config_facts()
    return set(facts), origin


class Lint(unittest.TestCase):
    def test_pages_render_and_lint_clean(self):
        for page in PAGES:
            text = render(page)
            self.assertIn("NAME", text, page)
            p = subprocess.run(["mandoc", "-T", "lint", "-W", "warning",
                                os.path.join(ARGS.man_dir, page)], capture_output=True, text=True)
            msgs = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
            other = [l for l in msgs if not any(a in l for a in ACCEPTED_LINT)]
            self.assertEqual(other, [], "mandoc -T lint on " + page)


class ConfigPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.terms = terms(render("parexd.json.5"))

    def test_every_accepted_key_is_documented(self):
        keys, origin = accepted_keys()
        self.assertGreater(len(keys), 15, "keys found in " + origin)
        missing = sorted(k for k in keys if k not in self.terms)
        self.assertEqual(missing, [], "keys the daemon accepts (from %s) missing in "
                         "parexd.json(5)" % origin)
        for k in keys:
            entry = self.terms[k]
            self.assertRegex(entry, r"\bdefault\b", "%s: no default in (%s)" % (k, entry))
            self.assertRegex(entry, r"SIGHUP: (applied|kept)", "%s: no SIGHUP in (%s)" % (k, entry))
        print("config keys from " + origin)

    def test_no_key_the_daemon_refuses_is_documented(self):
        keys, origin = accepted_keys()
        documented = [t for t, e in self.terms.items() if "SIGHUP:" in e]
        self.assertEqual(sorted(set(documented) - keys), [], "documented but refused (" + origin
                         + ")")

    def test_defaults_and_ranges_are_the_codes(self):
        facts, origin = config_facts()
        checked = 0
        for key, f in sorted(facts.items()):
            entry = self.terms.get(key, "")
            if f["range"] is not None:
                m = re.search(r"range (\S+) to (\S+?)[;,)]?(?:\s|$)", entry + " ")
                self.assertIsNotNone(m, "%s: no numeric range in (%s)" % (key, entry))
                self.assertEqual((number(m.group(1)), number(m.group(2))), f["range"],
                                 "%s: the page's range is not the code's (%s)" % (key, origin))
                checked += 1
            d = f["default"]
            if d is None or d == "null":
                continue
            if not re.fullmatch(r"-?[0-9.]+", d):
                self.assertIn("default " + d, entry, "%s: the page's default is not the code's "
                              "(%s)" % (key, origin))
            else:
                m = re.search(r"default (-?[0-9.]+)", entry)
                self.assertIsNotNone(m, "%s: no numeric default in (%s)" % (key, entry))
                self.assertEqual(number(m.group(1)), number(d), "%s: the page's default is not "
                                 "the code's (%s)" % (key, origin))
            checked += 1
        self.assertGreaterEqual(checked, 18, "facts checked, from " + origin)

    def test_sighup_entries_match_the_reload(self):
        facts, origin = config_facts()
        for key, f in sorted(facts.items()):
            self.assertIn("SIGHUP: " + f["sighup"], self.terms.get(key, ""),
                          "%s: SIGHUP %s it (%s)" % (key, f["sighup"], origin))

    def test_every_handler_option_is_documented(self):
        opts = set()
        for path, text in sources(r"px_spec_only\("):
            for arr in re.findall(r"static const char \*const \w+\[\] = \{([^}]*)\}", text):
                opts.update(re.findall(r'"(\w+)"', arr))
        self.assertGreater(len(opts), 15, "handler options found")
        components = set(c for t in self.terms for c in t.split("."))
        self.assertEqual(sorted(opts - components), [], "handler options missing in "
                         "parexd.json(5)")


    def test_handler_option_ranges_are_the_codes(self):
        bounds = {}
        for _, text in sources(r"opt_int\("):
            for m in re.finditer(r'opt_int\([^;]*?"(\w+)",\s*([^,]+?),\s*([^,]+?),', text):
                bounds[m.group(1)] = (number(m.group(2)), number(m.group(3)))
        self.assertGreaterEqual(len(bounds), 4, "integer handler options found: %s" % bounds)
        for name, want in sorted(bounds.items()):
            entries = [e for t, e in self.terms.items() if t.split(".")[-1] == name]
            self.assertEqual(len(entries), 1, "one entry for handler option " + name)
            m = re.search(r"range (\S+) to (\S+?)[;,)]?(?:\s|$)", entries[0] + " ")
            self.assertIsNotNone(m, "%s: no range in (%s)" % (name, entries[0]))
            self.assertEqual((number(m.group(1)), number(m.group(2))), want, name)


class CommandPages(unittest.TestCase):
    def flags_of(self, binary):
        return set(re.findall(r"(--[a-z][a-z-]+)", help_text(binary)))

    def test_parexd_page_names_every_option(self):
        text = render("parexd.8")
        flags = self.flags_of(ARGS.parexd)
        self.assertGreater(len(flags), 6)
        self.assertEqual(sorted(f for f in flags if f not in text), [], "parexd(8)")

    def test_parex_bench_page_names_every_option(self):
        text = render("parex-bench.1")
        flags = self.flags_of(ARGS.parex_bench)
        self.assertGreater(len(flags), 15)
        self.assertEqual(sorted(f for f in flags if f not in text), [], "parex-bench(1)")

    def test_parexctl_page_names_every_subcommand_and_option(self):
        usage = help_text(ARGS.parexctl)
        subs = set()
        for line in usage.splitlines():
            m = re.match(r"\s*parexctl (.*)", line)
            if not m:
                continue
            # "parked | unpark KEY | drop KEY [--addr H:P] (quarantine)": strip the optional
            # parts, then each |-separated alternative starts with a subcommand.
            rest = re.sub(r"\[[^\]]*\]|\([^)]*\)|<.*", "", m.group(1))
            for alt in rest.split("|"):
                word = alt.split()[0] if alt.split() else ""
                if re.fullmatch(r"[a-z][a-z-]*", word):
                    subs.add(word)
        self.assertGreater(len(subs), 8, "subcommands found in parexctl --help: %s" % subs)
        # The derivation is right: the binary takes each one, and refuses a made-up one.
        for s in sorted(subs) + ["no-such-command"]:
            p = subprocess.run([ARGS.parexctl, s, "--no-such-flag"], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
            unknown = "unknown command" in p.stderr
            self.assertEqual(unknown, s == "no-such-command", "parexctl %s: %s" % (s, p.stderr))
        text = render("parexctl.1")
        commands = text.split("COMMANDS", 1)[1].split("\nOPTIONS", 1)[0]
        listed = set(terms(commands))
        self.assertEqual(sorted(subs - listed), [], "subcommands missing in parexctl(1) COMMANDS")
        flags = self.flags_of(ARGS.parexctl)
        self.assertEqual(sorted(f for f in flags if f not in text), [], "parexctl(1) options")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for a in ("--man-dir", "--source", "--parexd", "--parexctl", "--parex-bench"):
        ap.add_argument(a, required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0], "-v"] + rest)
