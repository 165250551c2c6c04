// End-to-end test of the web app in a real browser: Debian's chromium
// driven by playwright-core against a real chatd (and chatctl), as
// scripts/test-browser.sh runs it:
//   CHATD_BIN=bin/chatd CHATCTL_BIN=bin/chatctl node e2e/run.mjs
// Screenshots go to $E2E_ARTIFACTS (default test-results/). Every step
// asserts an outcome the user would see; the first failure ends the run
// with a non-zero exit and a screenshot of each open page.
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const CHATD = resolve(process.env.CHATD_BIN ?? "../../bin/chatd");
const CHATCTL = resolve(process.env.CHATCTL_BIN ?? "../../bin/chatctl");
const BROWSER = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = resolve(process.env.E2E_ARTIFACTS ?? "test-results");
const GRACE_S = 3; // --presence-grace: the dot must go off within it (plus a heartbeat)
mkdirSync(ARTIFACTS, { recursive: true });

const dataDir = mkdtempSync(join(tmpdir(), "chatd-e2e-"));
let chatd;
let browser;
const pages = {};

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

const grpcPort = await freePort();
const httpPort = await freePort();
const BASE = `http://127.0.0.1:${httpPort}`;
const GRPC = `127.0.0.1:${grpcPort}`;

async function startChatd() {
  chatd = spawn(
    CHATD,
    [
      "--grpc-addr", GRPC,
      "--http-addr", `127.0.0.1:${httpPort}`,
      "--data-dir", dataDir,
      "--heartbeat-interval", "1s",
      "--presence-grace", `${GRACE_S}s`,
      "--drain-window", "3s", // SIGTERM drains: every page gets a Drain frame within it and reconnects
      "--log-level", "warn",
    ],
    { stdio: ["ignore", "inherit", "inherit"] },
  );
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`${BASE}/healthz`);
      if (r.ok) return;
    } catch {}
    await sleep(50);
  }
  throw new Error("chatd did not become healthy");
}

async function stopChatd() {
  const p = chatd;
  chatd = undefined;
  if (!p || p.exitCode !== null) return;
  const exited = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  await exited;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

let stepNo = 0;
async function step(name, fn) {
  stepNo++;
  const t0 = Date.now();
  process.stdout.write(`  ${stepNo}. ${name} … `);
  await fn();
  console.log(`ok (${Date.now() - t0} ms)`);
}

function chatctl(user, ...args) {
  return execFileSync(CHATCTL, ["--server", GRPC, "--config-dir", join(dataDir, `ctl-${user}`), ...args], { encoding: "utf8" });
}

async function signUp(page, user) {
  await page.goto(BASE + "/");
  await page.locator("#username").fill(user);
  await page.locator("#password").fill(`password-${user}`);
  await page.locator("#display-name").fill(user[0].toUpperCase() + user.slice(1));
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.locator('.conn[data-state="live"]').waitFor({ timeout: 10_000 });
}

function conv(page, channelId) {
  return page.locator(`ul.channels button[data-channel="${channelId}"]`);
}

function message(page, text) {
  return page.locator("ol.messages li .text", { hasText: text });
}

async function send(page, text) {
  await page.locator("#composer").fill(text);
  await page.locator("#composer").press("Enter");
}

/** texts returns the messages shown in the open conversation, in order. */
async function texts(page) {
  return page.locator("ol.messages li[data-message-id] .text").allTextContents();
}

async function ids(page) {
  return page.locator("ol.messages li[data-message-id]").evaluateAll((els) => els.map((e) => e.dataset.messageId));
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const DM = "dm:alice:bob";

try {
  await startChatd();
  browser = await chromium.launch({
    executablePath: BROWSER,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const ctxA = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const ctxB = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const ctxC = await browser.newContext({ viewport: { width: 360, height: 720 } });
  pages.alice = await ctxA.newPage();
  pages.bob = await ctxB.newPage();
  const { alice, bob } = pages;
  for (const [n, p] of Object.entries(pages)) {
    p.on("pageerror", (e) => console.error(`[${n}] page error: ${e.message}`));
    p.on("dialog", (d) => d.accept());
  }
  console.log(`chatd at ${BASE}, chromium at ${BROWSER}`);

  await step("two browsers sign up (alice, bob) and connect", async () => {
    await signUp(alice, "alice");
    await signUp(bob, "bob");
  });

  await step("alice starts a chat with bob; her message reaches bob's page within 1 s", async () => {
    await alice.locator("#new-chat").fill("bob");
    await alice.getByRole("button", { name: "Start chat" }).click();
    await alice.locator("#conversation-title", { hasText: "bob" }).waitFor();
    await send(alice, "hello bob");
    await conv(bob, DM).filter({ hasText: "hello bob" }).waitFor({ timeout: 1000 });
  });

  await step("bob opens it and answers; alice sees it within 1 s; bob sees it read", async () => {
    await conv(bob, DM).click();
    await message(bob, "hello bob").waitFor();
    await send(bob, "hi alice");
    await message(alice, "hi alice").waitFor({ timeout: 1000 });
    await message(bob, "hi alice").waitFor({ timeout: 1000 });
    // alice has the conversation open: bob's message shows as read on his page.
    await bob.locator("ol.messages li.mine", { hasText: "hi alice" }).locator(".tick", { hasText: "read" }).waitFor({ timeout: 3000 });
  });

  await step("typing shows on the other page", async () => {
    await sleep(2100); // chatd passes one typing frame per device and channel every 2 s (chat.TypingMinInterval)
    await bob.locator("#composer").pressSequentially("typing something", { delay: 20 });
    await alice.locator(".typing", { hasText: "bob is typing" }).waitFor({ timeout: 3000 });
    await bob.locator("#composer").fill("");
  });

  await step("markup in a message is shown as text, never run", async () => {
    const evil = `<img src=x onerror="window.__xss=1">`;
    await send(alice, evil);
    await message(bob, evil).waitFor({ timeout: 2000 });
    const xss = await bob.evaluate(() => window.__xss);
    const imgs = await bob.locator("ol.messages img").count();
    assert(xss === undefined && imgs === 0, `the message was rendered as HTML (xss=${xss}, img=${imgs})`);
  });

  await step("presence: bob's page shows alice online, and alice's page bob (who added her back after her page subscribed)", async () => {
    await bob.locator('.dot[data-presence="alice"][data-online="true"]').waitFor({ timeout: 5000 });
    await alice.locator('.dot[data-presence="bob"][data-online="true"]').waitFor({ timeout: 5000 });
  });

  await step("an edit and a delete show on the other page", async () => {
    const li = alice.locator("ol.messages li.mine", { hasText: "hello bob" });
    await li.getByRole("button", { name: "Edit message" }).click();
    await alice.locator("#composer").fill("hello bob (edited)");
    await alice.locator("#composer").press("Enter");
    await message(bob, "hello bob (edited)").waitFor({ timeout: 2000 });
    await bob.locator("ol.messages li", { hasText: "hello bob (edited)" }).locator(".meta", { hasText: "edited" }).waitFor();
    // Esc cancels an edit.
    await li.getByRole("button", { name: "Edit message" }).click();
    await alice.locator("#composer").press("Escape");
    assert((await alice.locator("#composer").inputValue()) === "", "Esc did not cancel the edit");
    const evilLi = alice.locator("ol.messages li.mine", { hasText: "onerror" });
    await evilLi.getByRole("button", { name: "Delete message" }).click();
    await bob.locator("ol.messages li .deleted").waitFor({ timeout: 2000 });
    assert((await message(bob, "onerror").count()) === 0, "the deleted message is still shown");
  });

  await step("screenshots of the conversation list and the conversation view", async () => {
    await bob.screenshot({ path: join(ARTIFACTS, "conversation-view.png") });
    await conv(alice, DM).waitFor();
    await alice.locator("aside").screenshot({ path: join(ARTIFACTS, "conversation-list.png") });
  });

  await step("a reload resumes the conversation from history with nothing doubled", async () => {
    const before = await texts(bob);
    const beforeIds = await ids(bob);
    await bob.reload();
    await bob.locator('.conn[data-state="live"]').waitFor({ timeout: 10_000 });
    await message(bob, "hi alice").waitFor();
    await sleep(500); // live deliveries after the sync would land now
    const after = await texts(bob);
    const afterIds = await ids(bob);
    assert(JSON.stringify(after) === JSON.stringify(before), `after reload ${JSON.stringify(after)}, before ${JSON.stringify(before)}`);
    assert(new Set(afterIds).size === afterIds.length && afterIds.length === beforeIds.length, `ids after reload ${afterIds}`);
  });

  await step(`presence: alice's dot goes off on bob's page after her page closes (grace ${GRACE_S}s)`, async () => {
    await bob.locator('.dot[data-presence="alice"][data-online="true"]').waitFor({ timeout: 5000 });
    await alice.close();
    await bob.locator('.dot[data-presence="alice"][data-online="false"]').waitFor({ timeout: (GRACE_S + 5) * 1000 });
    pages.alice = await ctxA.newPage(); // same context: the stored session logs her back in
    pages.alice.on("dialog", (d) => d.accept());
    await pages.alice.goto(`${BASE}/#c=${encodeURIComponent(DM)}`);
    await pages.alice.locator('.conn[data-state="live"]').waitFor({ timeout: 10_000 });
    await bob.locator('.dot[data-presence="alice"][data-online="true"]').waitFor({ timeout: 5000 });
  });
  const alice2 = pages.alice;

  let groupId = "";
  await step("alice creates a group with bob; carol, not a member, gets PermissionDenied on the page", async () => {
    await alice2.locator("#group-name").fill("friends");
    await alice2.locator("#group-members").fill("bob");
    await alice2.getByRole("button", { name: "Create group" }).click();
    await alice2.locator("#conversation-title", { hasText: "friends" }).waitFor();
    groupId = decodeURIComponent(new URL(alice2.url()).hash.replace(/^#c=/, ""));
    assert(groupId.startsWith("g:"), `group id ${groupId}`);
    await send(alice2, "welcome to friends");
    await conv(bob, groupId).filter({ hasText: "welcome to friends" }).waitFor({ timeout: 2000 });
    pages.carol = await ctxC.newPage();
    await signUp(pages.carol, "carol");
    await pages.carol.goto(`${BASE}/#c=${encodeURIComponent(groupId)}`);
    await pages.carol.locator("#conversation-error", { hasText: "PERMISSION_DENIED" }).waitFor({ timeout: 3000 });
    await pages.carol.screenshot({ path: join(ARTIFACTS, "permission-denied-360px.png") });
    // add and remove a member from the page
    await alice2.getByLabel("Username to add").fill("carol");
    await alice2.getByRole("button", { name: "Add", exact: true }).click();
    await alice2.getByRole("button", { name: "Remove carol" }).waitFor();
    await alice2.getByRole("button", { name: "Remove carol" }).click();
    await alice2.getByRole("button", { name: "Remove carol" }).waitFor({ state: "detached" });
  });

  await step("chatd restarts mid-conversation (SIGTERM: a drain): both pages reconnect by themselves and lose nothing", async () => {
    await conv(alice2, DM).click();
    await conv(bob, DM).click();
    await message(alice2, "hi alice").waitFor();
    await stopChatd();
    await bob.locator('.conn[data-state="reconnecting"]').waitFor({ timeout: 5000 });
    await alice2.locator('.conn[data-state="reconnecting"]').waitFor({ timeout: 5000 });
    await send(alice2, "sent while the server was down"); // queued, resent with its client_message_id
    await startChatd();
    await bob.locator('.conn[data-state="live"]').waitFor({ timeout: 20_000 });
    await alice2.locator('.conn[data-state="live"]').waitFor({ timeout: 20_000 });
    await message(bob, "sent while the server was down").waitFor({ timeout: 5000 });
    await send(bob, "after the restart");
    await message(alice2, "after the restart").waitFor({ timeout: 2000 });
    await sleep(500);
    for (const [n, p] of [["alice", alice2], ["bob", bob]]) {
      const t = await texts(p);
      for (const want of ["hello bob (edited)", "hi alice", "sent while the server was down", "after the restart"]) {
        const count = t.filter((x) => x === want).length;
        assert(count === 1, `${n}'s page shows ${JSON.stringify(want)} ${count} times: ${JSON.stringify(t)}`);
      }
    }
  });

  await step("a browser user and a chatctl user chat both ways", async () => {
    chatctl("dave", "signup", "dave", "--password", "password-dave", "--display-name", "Dave");
    chatctl("dave", "login", "dave", "--password", "password-dave", "--device", "cli");
    chatctl("dave", "send", "alice", "hi alice, from chatctl");
    const dmDave = "dm:alice:dave";
    await conv(alice2, dmDave).filter({ hasText: "from chatctl" }).waitFor({ timeout: 2000 });
    await conv(alice2, dmDave).click();
    await message(alice2, "hi alice, from chatctl").waitFor();
    await send(alice2, "hello dave, from the browser");
    await message(alice2, "hello dave, from the browser").waitFor({ timeout: 2000 });
    let out = "";
    for (let i = 0; i < 20 && !out.includes("from the browser"); i++) {
      out += chatctl("dave", "sync");
      if (!out.includes("from the browser")) await sleep(100);
    }
    assert(out.includes("hello dave, from the browser"), `chatctl sync printed:\n${out}`);
    // dave (chatctl) never added alice as a contact, so his presence stays
    // hidden from her; after a reload bob's dot must still show (a peer who
    // has not added you back must not hide everyone's presence).
    await alice2.reload();
    await alice2.locator('.dot[data-presence="bob"][data-online="true"]').waitFor({ timeout: 5000 });
  });

  await step("C302: markup sent from chatctl is shown as text on the page; no script runs", async () => {
    const evil = [`<img src=x onerror="window.__xss=2">`, `<script>window.__xss=3</script>`];
    for (const t of evil) chatctl("dave", "send", "alice", t);
    for (const t of evil) await message(alice2, t).waitFor({ timeout: 2000 });
    const xss = await alice2.evaluate(() => window.__xss);
    const injected = await alice2.locator("ol.messages img, ol.messages script").count();
    assert(xss === undefined && injected === 0, `markup from chatctl was rendered (xss=${xss}, elements=${injected})`);
  });

  await step("C301: a reload while messages arrive shows every message once, in order, and live delivery resumes", async () => {
    const n = 12;
    const sender = (async () => {
      for (let i = 0; i < n; i++) {
        chatctl("dave", "send", "alice", `c301 ${i}`);
        await sleep(50);
      }
    })();
    await sleep(150);
    await alice2.reload();
    await sender;
    await alice2.locator('.conn[data-state="live"]').waitFor({ timeout: 10_000 });
    await message(alice2, `c301 ${n - 1}`).waitFor({ timeout: 5000 });
    const got = (await texts(alice2)).filter((t) => t.startsWith("c301 "));
    const want = Array.from({ length: n }, (_, i) => `c301 ${i}`);
    assert(JSON.stringify(got) === JSON.stringify(want), `after a reload under traffic: ${JSON.stringify(got)}`);
    chatctl("dave", "send", "alice", "c301 live");
    await message(alice2, "c301 live").waitFor({ timeout: 2000 });
  });

  await step("unread count in the list, then history paged upward with nothing doubled", async () => {
    chatctl("erin", "signup", "erin", "--password", "password-erin");
    chatctl("erin", "login", "erin", "--password", "password-erin", "--device", "cli");
    const n = 35; // more than the app's first page (30)
    for (let i = 1; i <= n; i++) chatctl("erin", "send", "alice", `page ${i}`);
    const erin = "dm:alice:erin";
    await alice2.locator(`ul.channels button[data-channel="${erin}"][aria-label*="${n} unread"]`).waitFor({ timeout: 5000 });
    await conv(alice2, erin).click();
    await alice2.locator("ol.messages li .text").getByText(`page ${n}`, { exact: true }).waitFor();
    const first = await texts(alice2);
    assert(first.length === 30 && first[0] === `page ${n - 29}`, `the first page: ${JSON.stringify(first)}`);
    await alice2.getByRole("button", { name: "Load older messages" }).click();
    await alice2.locator("ol.messages li .text").getByText("page 1", { exact: true }).waitFor({ timeout: 3000 });
    const all = await texts(alice2);
    const want = Array.from({ length: n }, (_, i) => `page ${i + 1}`);
    assert(JSON.stringify(all) === JSON.stringify(want), `after paging: ${JSON.stringify(all)}`);
    assert((await alice2.getByRole("button", { name: "Load older messages" }).count()) === 0, "no older page is left, yet the button stays");
    await alice2.locator(`ul.channels button[data-channel="${erin}"]:not([aria-label*="unread"])`).waitFor({ timeout: 3000 });
  });

  await step("log out: the page returns to the log-in form and the device's token stops working", async () => {
    const carol = pages.carol;
    const token = await carol.evaluate(() => JSON.parse(localStorage.getItem("chatd.session") ?? "{}").accessToken);
    assert(token, "no stored session");
    await carol.getByRole("button", { name: "Log out" }).click();
    await carol.locator("#username").waitFor();
    assert((await carol.evaluate(() => localStorage.getItem("chatd.session"))) === null, "the session is still stored");
    const r = await fetch(`${BASE}/v1/users/me`, { headers: { authorization: `Bearer ${token}` } });
    assert(r.status === 401, `the logged-out token got ${r.status}, want 401`);
  });

  console.log(`browser end-to-end: all ${stepNo} steps passed; screenshots in ${ARTIFACTS}`);
} catch (e) {
  console.log("FAILED");
  console.error(e);
  for (const [n, p] of Object.entries(pages)) {
    const state = await p
      .evaluate(() =>
        JSON.stringify(
          [...window.chatd.convs.values()].map((c) => ({ id: c.channel.channelId, last: c.channel.lastMessageId, read: c.channel.readUpTo, receipts: [...c.receipts.values()] })),
          (k, v) => (typeof v === "bigint" ? v.toString() : v),
        ),
      )
      .catch((err) => String(err));
    console.error(`[${n}] state: ${state}`);
  }
  for (const [n, p] of Object.entries(pages)) {
    if (p && !p.isClosed()) await p.screenshot({ path: join(ARTIFACTS, `failure-${n}.png`) }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
  await stopChatd().catch(() => {});
  rmSync(dataDir, { recursive: true, force: true });
}
