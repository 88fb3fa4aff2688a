"""The history checker of the cluster tests.

Inputs: the load generators' files (one line per decision: "A t key seq msgid [submitted]"
accepted,
"R t key seq msgid status ms why" refused after ms, "D t msgid answer" answered) and the executors' files
("S t instance partition epoch key seq delivered msgid" started, "F t instance key seq msgid"
finished).
Sequences count per key in the order a load generator sent them.

Reported: lost (accepted, never started), duplicates (starts beyond the first, per request),
reorderings (per key: a request started for the first time before an earlier accepted one had;
a run of the key that skipped forward over an accepted request not run yet; two runs of one key
at once), stale re-runs (a re-run of an old request after later requests of its key ran, that
is not a replay of everything after it),
unanswered (accepted, no answer reached the load generator) and phantom runs (a request that
was never accepted, or refused, yet ran)."""
import collections


def read(paths, kind):
    out = []
    for p in paths:
        try:
            with open(p) as f:
                for line in f:
                    if line.startswith(kind + " "):
                        out.append(line.split(" ", 8))
        except FileNotFoundError:
            pass
    return out


UNCERTAIN = 3  # enum px_cluster_status PX_CL_UNCERTAIN


class Report:
    def __init__(self):
        self.accepted = {}      # msgid -> (key, seq)
        self.refused = set()
        self.refusals = []      # (time ns, status, ms it took)
        self.uncertain = {}     # msgid -> (key, seq): refused unconfirmed (publish timed out)
        self.uncertain_ran = 0
        self.answered = set()
        self.starts = collections.Counter()
        self.lost = []
        self.duplicates = 0
        self.dup_ids = []
        self.reorders = []
        self.prefix = []        # accepted behind a refusal it was submitted before
        self.stale = []         # re-runs of an old request after later ones of its key
        self.overlaps = []
        self.phantoms = []
        self.unanswered = []
        self.runs = 0

    def ok(self, allow_duplicates=True, allow_stale=False):
        return (not self.lost and not self.reorders and not self.overlaps and not self.phantoms
                and not self.prefix and (allow_duplicates or self.duplicates == 0)
                and (allow_stale or not self.stale))

    def summary(self):
        return ("accepted %d, refused %d, runs %d, lost %d, duplicates %d, reorderings %d, "
                "overlaps %d, phantoms %d, unanswered %d, unconfirmed %d (of which ran %d), "
                "accepted behind a refusal %d, stale re-runs %d" % (
                    len(self.accepted), len(self.refused), self.runs, len(self.lost),
                    self.duplicates, len(self.reorders), len(self.overlaps), len(self.phantoms),
                    len(self.unanswered), len(self.uncertain), self.uncertain_ran,
                    len(self.prefix), len(self.stale)))

    def details(self, n=5):
        return ("lost %s; reorders %s; overlaps %s; phantoms %s; duplicates %s; prefix %s; "
                "stale %s" % (self.lost[:n], self.reorders[:n], self.overlaps[:n],
                              self.phantoms[:n], self.dup_ids[:n], self.prefix[:n],
                              self.stale[:n]))


def check(load_files, history_files, paused=None, excused=None):
    """paused: {instance: t_ns} for an instance frozen (SIGSTOP) at t_ns: a handler it was running
    then finishes after it resumes, which no lease can prevent (the epoch handed to handlers is
    for fencing such side effects), so its run counts as ending at the pause."""
    paused = paused or {}
    excused = excused or set()  # accepted, yet allowed not to run (reported apart by the caller)
    r = Report()
    submitted = {}
    for f in read(load_files, "A"):
        if f[4].strip() in excused:
            r.uncertain[f[4].strip()] = (f[2], int(f[3]))
            continue
        r.accepted[f[4].strip()] = (f[2], int(f[3]))
        if len(f) > 5:
            submitted[f[4].strip()] = (f[2], int(f[3]), int(f[5]))
    for f in read(load_files, "R"):
        if int(f[5]) == UNCERTAIN:
            # Not confirmed in time: it may have been stored and then runs like an accepted one.
            r.uncertain[f[4].strip()] = (f[2], int(f[3]))
        else:
            r.refused.add(f[4].strip())
        r.refusals.append((int(f[1]), int(f[5]), int(f[6])))
    for f in read(load_files, "D"):
        r.answered.add(f[2].strip())
    finish = {}
    for f in read(history_files, "F"):
        finish.setdefault((f[5].strip(), f[2]), []).append(int(f[1]))
    per_key = collections.defaultdict(list)
    for f in read(history_files, "S"):
        t, inst, key, seq, msgid = int(f[1]), f[2], f[5], int(f[6]), f[8].strip()
        r.runs += 1
        r.starts[msgid] += 1
        if msgid in r.uncertain:
            if r.starts[msgid] == 1:
                r.uncertain_ran += 1
        elif msgid not in r.accepted:
            r.phantoms.append((key, seq, msgid, "refused" if msgid in r.refused else "unknown"))
        per_key[key].append((t, seq, msgid, inst))
    for msgid, n in r.starts.items():
        if n > 1:
            r.duplicates += n - 1
            r.dup_ids.append((msgid, n))
    r.lost = sorted(m for m in r.accepted if r.starts[m] == 0)
    r.unanswered = sorted(m for m in r.accepted if m not in r.answered)
    # A key's accepted requests are a prefix of what was submitted up to each refusal: one
    # submitted before a refusal of an earlier request of its key was seen must not be accepted.
    refusals = collections.defaultdict(list)
    for f in read(load_files, "R"):
        refusals[f[2]].append((int(f[3]), int(f[1])))
    for msgid, (key, seq, sub_t) in submitted.items():
        for rseq, seen_t in refusals.get(key, ()):
            if rseq < seq and sub_t < seen_t:
                r.prefix.append((key, seq, "accepted after refused", rseq))
    want = collections.defaultdict(list)
    for msgid, (key, seq) in r.accepted.items():
        want[key].append(seq)
    for msgid, (key, seq) in r.uncertain.items():
        if r.starts[msgid]:
            want[key].append(seq)
    for key, runs in per_key.items():
        runs.sort()
        order = sorted(want[key])
        nxt = {s: order[i + 1] for i, s in enumerate(order[:-1])}
        seen = set()
        high = 0
        prev = None
        busy_until = 0
        for t, seq, msgid, inst in runs:
            if seq not in seen and seq < high:
                r.reorders.append((key, seq, "first run after", high))
            if prev is not None and seq > prev and nxt.get(prev) is not None and seq != nxt[prev]:
                skipped = [s for s in order if prev < s < seq]
                if any(s not in seen for s in skipped):
                    r.reorders.append((key, seq, "skipped forward from", prev))
                else:
                    # A re-run that is not a suffix of what ran: an old request came back
                    # after later ones of its key had run (and were not run again).
                    r.stale.append((key, prev, "re-run after", seq))
            # Two runs of a key at once (a run whose finish is unknown was cut by a kill).
            if t < busy_until:
                r.overlaps.append((key, seq, inst))
            ends = [e for e in finish.get((msgid, inst), []) if e >= t]
            if inst in paused and t < paused[inst]:
                ends = [min(e, paused[inst]) for e in ends]
            busy_until = max(busy_until, min(ends)) if ends else busy_until
            seen.add(seq)
            high = max(high, seq)
            prev = seq
    return r
