"""Browser test of the rule studio (run by .ci/studio-e2e).

Starts `vitrine serve --demo --admin-token ...` on free ports, drives the
page at /studio with Playwright and Debian's Chromium, and checks what a rule
author sees: an error marked at its line, audience sizes beside the
audiences, the try-a-visitor comparison, publish (served by Decide), rollback,
the lift chart, and that without the token publishing is refused. Every wait
is on a signal (/readyz, DOM state, a process exit), never a fixed sleep.
Takes the screenshots docs/studio/error.png and docs/studio/try.png.

Usage: python3 .ci/studio_e2e.py VITRINE_BIN [SCREENSHOT_DIR]
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "studio-e2e-token"
SHOP = "demo-apparel"
# A demo visitor whose banner the draft below changes: the README tour's
# first Decide answers `your-cart-is-waiting` for them.
VISITOR = "v-0001"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's waits: generous, the server is a debug build on a busy machine.
TIMEOUT_MS = 60_000
expect.set_options(timeout=TIMEOUT_MS)


PASSED = []


def fail(msg):
    print(f"studio-e2e: FAILED: {msg}", file=sys.stderr)
    print(f"studio-e2e: {len(PASSED)} passed, 1 failed", flush=True)
    raise SystemExit(1)


def ok(name):
    PASSED.append(name)
    print(f"ok: {name}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, url, err_path):
    """Polls /readyz until it answers 200; fails as soon as the server exits."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the server exited ({proc.returncode}):\n{Path(err_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        try:
            proc.wait(timeout=0.2)  # wakes early if the server dies
        except subprocess.TimeoutExpired:
            pass
    fail("the server did not become ready in 120 s")


def decide_revision(grpc_addr):
    """The rule revision Decide answers with, through grpcurl as .ci/smoke does."""
    req = json.dumps({"shop": SHOP, "visitor": VISITOR, "context": {"page": "home", "region": "south"}})
    out = subprocess.run(
        ["grpcurl", "-plaintext", "-d", req, grpc_addr, "vitrine.v1.Decision/Decide"],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        fail(f"grpcurl Decide: {out.stderr}")
    return int(json.loads(out.stdout)["ruleRevision"]), json.loads(out.stdout)


def main():
    if len(sys.argv) < 2:
        fail("usage: studio_e2e.py VITRINE_BIN [SCREENSHOT_DIR]")
    binary = sys.argv[1]
    shots = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "docs" / "studio")
    shots.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="studio-e2e."))
    shutil.copytree(ROOT / "rules", work / "rules")
    grpc_port, http_port = free_port(), free_port()
    grpc_addr = f"127.0.0.1:{grpc_port}"
    base = f"http://127.0.0.1:{http_port}"
    err_path = work / "server.err"
    proc = subprocess.Popen(
        [binary, "serve", "--demo",
         "--grpc-addr", grpc_addr, "--metrics-addr", f"127.0.0.1:{http_port}",
         "--rules-dir", str(work / "rules"), "--data-dir", str(work / "data"),
         "--admin-token", TOKEN],
        cwd=work, stdout=open(work / "server.out", "w"), stderr=open(err_path, "w"),
    )
    try:
        wait_ready(proc, f"{base}/readyz", err_path)
        ok("server ready")
        run(base, grpc_addr, shots)
        print(f"studio-e2e: {len(PASSED)} passed, 0 failed", flush=True)
    except Exception:
        print(f"studio-e2e: {len(PASSED)} passed, 1 failed", flush=True)
        sys.stderr.write(f"--- server log (tail)\n{err_path.read_text()[-3000:]}\n")
        raise
    except SystemExit:
        sys.stderr.write(f"--- server log (tail)\n{err_path.read_text()[-3000:]}\n")
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


# Runs in the page: diffLines(a, b) must rebuild a (' ' and '-') and b
# (' ' and '+') and keep a longest common subsequence of lines.
DIFF_PROPERTY = """() => {
  const lcs = (a, b) => {
    const d = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
    for (let i = a.length - 1; i >= 0; i--) for (let j = b.length - 1; j >= 0; j--)
      d[i][j] = a[i] === b[j] ? d[i + 1][j + 1] + 1 : Math.max(d[i + 1][j], d[i][j + 1]);
    return d[0][0];
  };
  let seed = 18; // mulberry32: reproducible, and its low bits are as random as its high ones
  const rnd = (n) => {
    seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) % n);
  };
  const file = () => Array.from({ length: rnd(14) }, () => 'abcd'[rnd(4)]);
  const bad = [];
  for (let t = 0; t < 500 && bad.length < 3; t++) {
    const a = file(); const b = file();
    const ops = window.vitrineStudio.diffLines(a, b, 1000);
    const ra = ops.filter((o) => o[0] !== '+').map((o) => o[1]).join('');
    const rb = ops.filter((o) => o[0] !== '-').map((o) => o[1]).join('');
    const same = ops.filter((o) => o[0] === ' ').length;
    if (ra !== a.join('') || rb !== b.join('') || same !== lcs(a, b)) bad.push([a.join(''), b.join('')]);
  }
  if (window.vitrineStudio.diffLines(['x', 'y'], ['p', 'q', 'r'], 2) !== null) bad.push('no bound');
  return bad;
}"""


def line_of(text, needle):
    for i, line in enumerate(text.split("\n"), 1):
        if line == needle:
            return i
    fail(f"the demo rule file has no line {needle!r}")


def run(base, grpc_addr, shots):
    rules = (ROOT / "rules" / f"{SHOP}.yaml").read_text()
    origin = base
    foreign = []
    problems = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)

        def watch(page):
            # Nothing may be requested outside the page's own origin.
            page.on("request", lambda r: None if r.url.startswith(origin + "/") or r.url.startswith("data:")
                    else foreign.append(r.url))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}")
                    if m.type == "error" and ("Content Security Policy" in m.text or "Refused" in m.text
                                              or "Uncaught" in m.text) else None)

        ctx = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-US", timezone_id="UTC")
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        watch(page)
        page.goto(f"{base}/studio")

        # The token is asked once (the server was started with --admin-token).
        expect(page.locator("#token-dialog")).to_be_visible()
        page.fill("#token-input", TOKEN)
        page.click("#token-save")
        expect(page.locator("#token-state")).to_have_text("token set for this tab")
        ok("token entered")
        # Every form control has an accessible name (a label or aria-label).
        unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
            .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id)""")
        if unnamed:
            fail(f"form controls without a label: {unnamed}")
        ok("every form control is labelled")

        # Pick the shop: the editor gets its serving file, sizes come with the first check.
        expect(page.locator(f'#shop option[value="{SHOP}"]')).to_have_count(1)
        label = page.locator(f'#shop option[value="{SHOP}"]').inner_text()
        start_rev = int(re.search(r"revision (\d+)", label).group(1))
        page.select_option("#shop", SHOP)
        expect(page.locator("#editor")).to_have_value(rules)
        expect(page.locator("#check-summary")).to_contain_text("No errors")
        ok(f"shop opened at revision {start_rev}")

        # Two errors: both marked at their line, listed as line:column message.
        l1 = line_of(rules, "  - when: cart_abandoner")
        l2 = line_of(rules, "  - when: win_back or dormant")
        bad = rules.replace("  - when: cart_abandoner\n", "  - when: cart_abandonr\n", 1) \
                   .replace("  - when: win_back or dormant\n", "  - when: win_back or dormnt\n", 1)
        page.fill("#editor", bad)
        mark = page.locator(f'#gutter .g-mark[data-line="{l1}"]')
        expect(mark).to_have_text(f"✖ {l1}")
        expect(page.locator(f'#gutter .g-mark[data-line="{l2}"]')).to_have_text(f"✖ {l2}")
        expect(page.locator(".g-mark")).to_have_count(2)
        expect(page.locator(f'#bands .band[data-line="{l1}"]')).to_have_count(1)
        first = page.locator(f'#errors button[data-line="{l1}"]')
        expect(first).to_have_text(f"{l1}:11 undefined audience `cart_abandonr`")
        expect(page.locator(f'#errors button[data-line="{l2}"]')).to_have_text(
            re.compile(rf"^{l2}:\d+ undefined audience `dormnt`$"))
        expect(page.locator("#check-summary")).to_contain_text("2 errors")
        # The list jumps to the error: the caret lands on line:column, the line scrolls into view.
        first.click()
        caret = page.evaluate("() => document.getElementById('editor').selectionStart")
        want = sum(len(x) + 1 for x in bad.split("\n")[: l1 - 1]) + 10
        if caret != want:
            fail(f"the error link put the caret at {caret}, expected {want}")
        expect(page.locator("#editor")).to_be_focused()
        # The marker sits on its line's row and, after the jump, inside the visible gutter.
        box_mark = mark.bounding_box()
        box_inner = page.locator("#gutter-inner").bounding_box()
        box_gutter = page.locator("#gutter").bounding_box()
        row = round((box_mark["y"] - box_inner["y"]) / 20)  # 20 px lines (--lh)
        if row != l1 - 1:
            fail(f"marker of line {l1} drawn on row {row + 1}")
        if not (box_gutter["y"] <= box_mark["y"] and box_mark["y"] + 20 <= box_gutter["y"] + box_gutter["height"]):
            fail("after the jump the marked line is not in view")
        page.screenshot(path=str(shots / "error.png"))
        ok(f"errors marked at lines {l1} and {l2}; the list jumps to {l1}:11 (screenshot error.png)")

        # Tab inserts two spaces; Escape then Tab leaves the editor.
        before = page.input_value("#editor")
        page.keyboard.press("Tab")
        if page.input_value("#editor") != before[:want] + "  " + before[want:]:
            fail("Tab did not insert two spaces at the caret")
        # With lines selected, Tab indents each of them and Shift+Tab undoes it.
        indented = page.input_value("#editor")
        lines = indented.split("\n")
        a = sum(len(x) + 1 for x in lines[: l1 - 1])
        page.evaluate(f"() => document.getElementById('editor').setSelectionRange({a + 3}, {a + len(lines[l1 - 1]) + 3})")
        page.keyboard.press("Tab")
        got = page.input_value("#editor").split("\n")
        if got[l1 - 1] != "  " + lines[l1 - 1] or got[l1] != "  " + lines[l1] or got[l1 + 1] != lines[l1 + 1]:
            fail(f"Tab on two selected lines gave {got[l1 - 1:l1 + 2]}")
        page.keyboard.press("Shift+Tab")
        if page.input_value("#editor") != indented:
            fail("Shift+Tab did not undo the indent of the selected lines")
        page.keyboard.press("Escape")
        page.keyboard.press("Tab")
        expect(page.locator("#editor")).not_to_be_focused()
        ok("Tab indents (a line or the selected lines), Shift+Tab outdents, Escape then Tab leaves the editor")

        # Fix the file and change what cart abandoners see: sizes beside each audience.
        draft = rules.replace("    banner: your-cart-is-waiting\n", "    banner: your-cart-misses-you\n", 1)
        page.fill("#editor", draft)
        expect(page.locator(".g-mark")).to_have_count(0)
        expect(page.locator("#check-summary")).to_contain_text("No errors")
        la = line_of(rules, "  cart_abandoner:   carted(7d) and not purchased(7d)")
        size = page.locator(f'#side .s-size[data-line="{la}"]')
        expect(size).to_have_attribute("data-audience", "cart_abandoner")
        expect(size).to_have_text(re.compile(r"^[\d,]+$"))
        south = line_of(rules, '  south:            ctx.region in ["south", "southwest"]')
        expect(page.locator(f'#side .s-size[data-line="{south}"]')).to_have_text("per request")
        expect(page.locator("#sizes tbody tr[data-audience=cart_abandoner] td.num")).to_have_text(size.inner_text())
        ok(f"sizes beside the audiences (cart_abandoner at line {la}: {size.inner_text()})")

        # Try a visitor: the draft changes the banner, the serving side does not.
        page.fill("#try-visitor", VISITOR)
        page.fill("#try-page", "home")
        page.fill("#try-region", "south")
        page.click("#try-run")
        expect(page.locator("#try-summary")).to_contain_text(f"The draft changes banner")
        expect(page.locator('#try-draft dd[data-facet="banner"]')).to_contain_text("your-cart-misses-you")
        expect(page.locator('#try-serving dd[data-facet="banner"]')).to_contain_text("your-cart-is-waiting")
        expect(page.locator('#try-draft dt[data-facet="banner"] .badge')).to_have_text("changed")
        expect(page.locator("#try-serving-title")).to_have_text(f"Serving (revision {start_rev})")
        expect(page.locator("#try-draft .steps tbody tr").first).to_be_visible()
        page.evaluate("() => document.getElementById('try-section').scrollIntoView()")
        page.screenshot(path=str(shots / "try.png"))
        ok("try a visitor: draft and serving side by side (screenshot try.png)")

        # The optional instant is sent as now_ms (the browser runs in UTC here).
        instant = int(time.time()) - 86_400
        page.fill("#try-instant", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(instant)))
        with page.expect_request("**/studio/api/try") as sent:
            page.click("#try-run")
        if sent.value.post_data_json.get("now_ms") != instant * 1000:
            fail(f"the instant was sent as {sent.value.post_data_json.get('now_ms')}, expected {instant * 1000}")
        expect(page.locator("#try-summary")).to_contain_text("The draft changes banner")
        page.fill("#try-instant", "")
        ok("the instant is sent as now_ms")

        # A second author opens the same file before the publish below.
        other_ctx, other = second_author(browser, base)
        expect(other.locator("#edit-meta")).to_contain_text(f"Opened at revision {start_rev}")

        # Publish with the keyboard: the new revision is what Decide serves,
        # and the focus stays on the button.
        page.focus("#publish")
        page.keyboard.press("Enter")
        published = start_rev + 1
        expect(page.locator("#status")).to_have_text(f"Published: {SHOP} now serves revision {published}.")
        expect(page.locator("#publish")).to_be_focused()
        rev, answer = decide_revision(grpc_addr)
        if rev != published or answer.get("banner", {}).get("id") != "your-cart-misses-you":
            fail(f"after publish Decide answered revision {rev}: {answer}")
        expect(page.locator(f'#history tbody tr[data-revision="{published}"]')).to_contain_text("serving")
        ok(f"published revision {published} (keyboard), served by Decide")

        # The diff between the two revisions shows the changed line.
        page.select_option("#diff-from", str(start_rev))
        page.select_option("#diff-to", str(published))
        page.click("#diff-show")
        expect(page.locator("#diff-summary")).to_have_text(re.compile(r"^1 line removed, 1 added"))
        expect(page.locator("#diff-body .d-del")).to_contain_text("banner: your-cart-is-waiting")
        expect(page.locator("#diff-body .d-add")).to_contain_text("banner: your-cart-misses-you")
        # The diff is minimal and complete: random files against a plain LCS.
        bad_cases = page.evaluate(DIFF_PROPERTY)
        if bad_cases:
            fail(f"line diff disagrees with LCS: {bad_cases}")
        ok("diff between revisions (and 500 random line diffs agree with LCS)")

        # The second author's publish is refused: expected_revision is stale (409).
        other.fill("#editor", rules + "# edited by a second author\n")
        other.click("#publish")
        expect(other.locator("#conflict-text")).to_contain_text(
            f"another author published revision {published} of {SHOP} since you opened revision {start_rev}")
        other.click("#conflict-diff")
        expect(other.locator("#diff-body .d-add", has_text="+ # edited by a second author")).to_have_count(1)
        other_ctx.close()
        rev, _ = decide_revision(grpc_addr)
        if rev != published:
            fail(f"a stale publish changed the serving revision to {rev}")
        ok("a stale publish is refused (409) and names the other author's revision")

        # Roll back to the opening revision (confirmed): a new revision with the old file.
        page.select_option("#rollback-to", str(start_rev))
        page.once("dialog", lambda d: d.accept())
        page.click("#rollback")
        rolled = published + 1
        expect(page.locator("#status")).to_have_text(
            f"Rolled back: {SHOP} now serves revision {rolled} (the file of revision {start_rev}).")
        expect(page.locator("#editor")).to_have_value(rules)
        rev, answer = decide_revision(grpc_addr)
        if rev != rolled or answer.get("banner", {}).get("id") != "your-cart-is-waiting":
            fail(f"after rollback Decide answered revision {rev}: {answer}")
        ok(f"rolled back: revision {rolled} serves the file of revision {start_rev}")

        # Lift: rows in the table and in the chart.
        page.click("#lift-load")
        expect(page.locator("#lift-table tbody tr").first).to_be_visible()
        n_rows = page.locator("#lift-table tbody tr").count()
        expect(page.locator("#lift-chart svg g.lift-row")).to_have_count(n_rows)
        ok(f"lift chart renders {n_rows} rows")
        ctx.close()

        # Without the token: reads work, publishing is refused with 401.
        ctx = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-US", timezone_id="UTC")
        ctx.set_default_timeout(TIMEOUT_MS)
        page = ctx.new_page()
        watch(page)
        page.goto(f"{base}/studio")
        expect(page.locator("#token-dialog")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#token-state")).to_have_text("no token: read only")
        page.select_option("#shop", SHOP)
        expect(page.locator("#editor")).to_have_value(rules)
        # The address keeps the shop: a reload opens it again.
        if not page.url.endswith(f"#shop={SHOP}"):
            fail(f"the address does not name the shop: {page.url}")
        page.reload()
        expect(page.locator("#shop")).to_have_value(SHOP)
        expect(page.locator("#editor")).to_have_value(rules)
        expect(page.locator("#token-dialog")).to_be_hidden()  # asked once per tab
        page.fill("#editor", draft)
        page.click("#publish")
        expect(page.locator("#status")).to_contain_text("UNAUTHENTICATED (HTTP 401)")
        rev, _ = decide_revision(grpc_addr)
        if rev != rolled:
            fail(f"a publish without the token changed the serving revision to {rev}")
        ok("without the token publishing is refused (401 shown)")
        ctx.close()
        hostile_text(browser, base)
        browser.close()

    if foreign:
        fail(f"the page requested other origins: {sorted(set(foreign))}")
    ok("no request left the page's origin")
    if problems:
        fail("the browser reported: " + "; ".join(problems))
    ok("no script error, no CSP violation")


def hostile_text(browser, base):
    """Text a careless author or another tool leaves in a rule file: CRLF
    line ends, a tab, an emoji before an error, a token with an accent."""
    shop = "demo-electronics"
    rules = (ROOT / "rules" / f"{shop}.yaml").read_text()
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-US", timezone_id="UTC")
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.add_init_script(f"sessionStorage.setItem('vitrine.studio.token', {json.dumps(TOKEN)})")
    page = ctx.new_page()
    page.goto(f"{base}/studio")

    # A file with CRLF line ends (published by another tool) opens unedited:
    # the textarea holds LF, the page compares and diffs in that form.
    crlf = rules.replace("\n", "\r\n")
    answer = page.request.post(f"{base}/studio/api/publish", data=json.dumps({"content": crlf}),
                               headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    if answer.status != 200:
        fail(f"publishing the CRLF file answered {answer.status}: {answer.text()}")
    crlf_rev = answer.json()["revision"]
    page.select_option("#shop", shop)
    expect(page.locator("#edit-meta")).to_contain_text(f"Opened at revision {crlf_rev}")
    expect(page.locator("#dirty")).to_have_text("No edits.")
    expect(page.locator("#revert")).to_be_disabled()
    expect(page.locator(f'#diff-to option[value="{crlf_rev}"]')).to_have_count(1)
    page.select_option("#diff-from", str(crlf_rev))
    page.select_option("#diff-to", "draft")
    page.click("#diff-show")
    expect(page.locator("#diff-summary")).to_have_text("The two files are identical.")
    ok("a CRLF file opens unedited and diffs equal to the editor")

    # Columns are characters: after a tab and an emoji (two UTF-16 units),
    # the error link lands on the error and its caret mark sits under it
    # (the tab starts at an even column, so it takes two).
    at = rules.index("audiences:\n") + len("audiences:\n")
    bad = rules[:at] + '  emoji_page: ctx.page == "a\t\U0001F6D2" or no_such_audience\n' + rules[at:]
    line = bad[: bad.index("no_such_audience")].count("\n") + 1
    text = bad.split("\n")[line - 1]
    col = text.index("no_such_audience") + 1  # Python counts code points, as the compiler does
    page.fill("#editor", bad)
    link = page.locator(f'#errors button[data-line="{line}"]')
    expect(link).to_have_text(f"{line}:{col} undefined audience `no_such_audience`")
    link.click()
    caret = page.evaluate("() => document.getElementById('editor').selectionStart")
    want = page.evaluate("() => document.getElementById('editor').value.indexOf('no_such_audience')")
    if caret != want:
        fail(f"the error link after an emoji put the caret at {caret}, expected {want}")
    screen = 0
    for ch in text[: col - 1]:
        screen = screen + 2 - screen % 2 if ch == "\t" else screen + 1
    left = page.locator("#bands .caret-mark").first.get_attribute("style")
    if f"+ {screen}ch)" not in left:
        fail(f"the caret mark of {line}:{col} is drawn at `{left}`, expected column {screen} (tabs stop every 2)")
    ok(f"an error after a tab and an emoji: the link lands on {line}:{col}, the mark under it")

    # Another shop's file pasted into this shop's editor is not published
    # over that shop, even when its revision is the one this shop was opened at.
    other = "demo-beauty"
    theirs = (ROOT / "rules" / f"{other}.yaml").read_text()
    auth = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    answer = page.request.post(f"{base}/studio/api/publish", headers=auth,
                               data=json.dumps({"content": theirs + "# via the API\n"}))
    if answer.status != 200 or answer.json()["revision"] != crlf_rev:
        fail(f"{other} should be at revision {crlf_rev} like {shop}: {answer.status} {answer.text()}")
    page.fill("#editor", theirs + "# pasted into the wrong shop\n")
    page.click("#publish")
    expect(page.locator("#status")).to_contain_text(f"the rule file of shop `{other}`, not of `{shop}`")
    shop_line = line_of(theirs, f"shop: {other}")
    expect(page.locator(f'#gutter .g-mark[data-line="{shop_line}"]')).to_have_count(1)
    newest = page.request.get(f"{base}/studio/api/revisions?shop={other}").json()["revisions"][0]["revision"]
    if newest != crlf_rev:
        fail(f"publishing {other}'s file from {shop}'s editor made {other} revision {newest}")
    ok(f"{other}'s file pasted into {shop}'s editor is refused at its shop line, {other} unchanged")

    # A decision tried on one shop is not left on screen under the next one.
    page.fill("#editor", rules)
    expect(page.locator("#dirty")).to_have_text("No edits.")
    page.fill("#try-visitor", "v-switch")
    page.click("#try-run")
    expect(page.locator("#try-summary")).to_contain_text("The draft decides the same as the serving file for v-switch")
    expect(page.locator("#try-result")).to_be_visible()
    page.select_option("#shop", SHOP)
    expect(page.locator("#edit-title")).to_have_text(f"Rule file of {SHOP}")
    expect(page.locator("#try-result")).to_be_hidden()
    expect(page.locator("#try-summary")).to_have_text("")
    ok(f"switching to {SHOP} clears the decision tried on {shop}")

    # A token no header can carry is refused in the dialog, the old one kept.
    page.click("#token-button")
    page.fill("#token-input", "s\u00e9cret")
    page.click("#token-save")
    expect(page.locator("#status")).to_contain_text("printable ASCII only")
    if page.evaluate("() => sessionStorage.getItem('vitrine.studio.token')") != TOKEN:
        fail("a non-ASCII token replaced the saved one")
    expect(page.locator("#token-state")).to_have_text("token set for this tab")
    ok("a non-ASCII token is refused, the saved one kept")
    ctx.close()


def second_author(browser, base):
    """Another author's tab, with the token, that opens the shop now."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 768})
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.add_init_script(f"sessionStorage.setItem('vitrine.studio.token', {json.dumps(TOKEN)})")
    page = ctx.new_page()
    page.goto(f"{base}/studio")
    page.select_option("#shop", SHOP)
    expect(page.locator("#check-summary")).to_contain_text("No errors")
    return ctx, page


if __name__ == "__main__":
    main()
