"""The alert rules against the daemon they watch: every parexd_* metric config/prometheus/
parexd-rules.yml names, and every label value it matches on, is in the real daemon's /metrics
(a renamed metric or label would otherwise leave an alert that can never fire); and the
accounting identity ParexdAccountingBroken checks holds on a real scrape after ok, failed,
rejected and invalid traffic (so it does not fire on a healthy daemon). promtool itself checks
and unit-tests the rules in their own ctest entries.

    python3 test_rules.py --parexd PATH --parexctl PATH --rules FILE
"""

import os
import re
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import pxharness as px  # noqa: E402

RULES = None
TOKEN = "t" * 24


def scrape(d):
    maddr = d.wait_log(r"metrics on (\S+)").group(1).rstrip(",")
    with urllib.request.urlopen("http://%s/metrics" % maddr, timeout=px.TIMEOUT) as r:
        return r.read().decode()


def parse_exposition(text):
    """{series name: [(labels dict, value)]} and the set of metric names a query may use."""
    series = {}
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$", line)
        if not m:
            raise AssertionError("unparsable exposition line: %r" % line)
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        series.setdefault(m.group(1), []).append((labels, float(m.group(4))))
        names.add(m.group(1))
    return series, names


class RulesMatchMetrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(RULES) as f:
            cls.rules = f.read()
        # A token, so a line without it is a rejected request; the fail op, for a failed one.
        cls.d = px.Daemon(config={"auth_token": TOKEN, "builtin_test_ops": True})
        with cls.d.connect() as c:
            for i in range(5):
                c.send({"key": "k%d" % i, "token": TOKEN, "payload": i})
            c.send({"key": "f", "op": "fail", "token": TOKEN})
            c.send({"key": "u"})                 # rejected: unauthorized
            c.send_raw(b"not json\n")            # invalid
            answers = c.recv_n(8)
        cls.statuses = sorted(a["status"] for a in answers)
        cls.series, cls.names = parse_exposition(scrape(cls.d))

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def test_traffic_was_answered(self):
        self.assertEqual(self.statuses, ["failed", "invalid"] + ["ok"] * 5 + ["rejected"])

    def test_every_metric_the_rules_name_is_exposed(self):
        used = set(re.findall(r"\b(parexd_[a-z0-9_]+)", self.rules))
        self.assertGreater(len(used), 10, "the rules name parexd's metrics")
        missing = sorted(n for n in used if n not in self.names)
        self.assertEqual(missing, [], "metrics the rules name but parexd does not expose")

    def test_every_label_value_the_rules_match_is_exposed(self):
        checked = 0
        for metric, matchers in re.findall(r"\b(parexd_[a-z0-9_]+)\{([^}]*)\}", self.rules):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', matchers):
                if "{{" in value:
                    continue  # a template in an annotation, not a matcher
                exposed = set(l.get(label) for l, _ in self.series.get(metric, []))
                for v in value.split("|") if op == "=~" else [value]:
                    self.assertIn(v, exposed, "%s{%s%s\"%s\"}: parexd exposes %s=%s"
                                  % (metric, label, op, value, label, sorted(exposed - {None})))
                    checked += 1
        self.assertGreater(checked, 5)

    def test_accounting_identity_holds_on_a_real_scrape(self):
        def total(name):
            return sum(v for _, v in self.series[name])
        received = total("parexd_requests_received_total")
        self.assertEqual(received, 7)  # the invalid line is not a request
        self.assertEqual(received - total("parexd_requests_rejected_total")
                         - total("parexd_requests_completed_total")
                         - total("parexd_requests_in_flight"), 0)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--parexd", required=True)
    ap.add_argument("--parexctl", required=True)
    ap.add_argument("--rules", required=True)
    args, rest = ap.parse_known_args()
    px.PAREXD = os.path.abspath(args.parexd)
    px.PAREXCTL = os.path.abspath(args.parexctl)
    RULES = args.rules
    unittest.main(argv=[sys.argv[0], "-v"] + rest)
