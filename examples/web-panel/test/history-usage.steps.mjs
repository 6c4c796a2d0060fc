// Browser steps for the conversation history (src/ConversationHistory.tsx)
// and the usage overview (src/UsageOverview.tsx), for test/panel.test.mjs:
// after a chat turn, the conversation must be listed with its messages and
// counted in today's usage. Both read what the host agent has synced from
// OpenClaw, which trails a turn by a few seconds: each wait is bounded and
// event-driven (page.waitForFunction on DOM mutations, keyed on the
// component's `data-loads` counter, so a check never reads an answer from
// before its click), and Refresh is pressed again, a bounded number of
// times, while the data has not arrived yet.

const SECOND = 1_000;
/** How long synced data may take to show up (the sync runs every few seconds). */
const SYNCED_WITHIN = 60 * SECOND;
/** One load (ListSessions, ListMessages, GetOverview + GetUsage). */
const LOAD_WITHIN = 30 * SECOND;
/** Pause between two Refresh presses while the data is not there yet. */
const REFRESH_EVERY = 2 * SECOND;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the page shows, for failure messages. */
async function pageText(page, selector = "body") {
  try {
    const text = await page.$eval(selector, (el) => el.innerText);
    return text.replace(/\s+\n/g, "\n").slice(0, 2_000);
  } catch (err) {
    return `(unreadable: ${err.message})`;
  }
}

/** Waits (re-checking on every DOM change) until `fn` returns something truthy; names what it waited for. */
async function waitOnChange(page, what, timeout, fn, ...args) {
  try {
    const handle = await page.waitForFunction(fn, { timeout, polling: "mutation" }, ...args);
    return await handle.jsonValue();
  } catch (err) {
    throw new Error(`${what}: not seen within ${Math.round(timeout / SECOND)} s (${err.message})\npage shows:\n${await pageText(page)}`);
  }
}

/** The number of finished loads `testId` reports (its `data-loads`). */
const loadsOf = (page, testId) =>
  page.$eval(`[data-testid=${testId}]`, (el) => Number(el.dataset.loads ?? 0));

/**
 * Presses `refreshTestId` and waits until `testId` finished a load after the
 * press (an answer or the error it shows); throws on the error.
 */
async function refreshAndWait(page, testId, refreshTestId, errorTestId) {
  const before = await loadsOf(page, testId);
  await page.click(`[data-testid=${refreshTestId}]`);
  const result = await waitOnChange(
    page,
    `${testId} to load again after ${refreshTestId}`,
    LOAD_WITHIN,
    (id, errorId, loads) => {
      const el = document.querySelector(`[data-testid=${id}]`);
      if (!el || Number(el.dataset.loads) <= loads || el.dataset.state === "refreshing") return null;
      const error = el.querySelector(`[data-testid=${errorId}]`);
      return { error: error ? `${error.dataset.code ?? ""} ${error.textContent}` : null };
    },
    testId,
    errorTestId,
    before,
  );
  if (result.error !== null) throw new Error(`${testId} shows an error after ${refreshTestId}: ${result.error}`);
}

/**
 * Checks the history and the usage after a chat turn: Refresh, the most
 * recent conversation holds a user message containing `expectUserText` and
 * an assistant message containing `expectAssistantText`; today's messages
 * and a day's bar count at least 2. Then `screenshot("web-panel-history-usage")`.
 *
 * @param {import("puppeteer-core").Page} page
 * @param {{ expectUserText: string, expectAssistantText: string, screenshot: (name: string) => Promise<unknown> }} options
 */
export async function checkHistoryAndUsage(page, { expectUserText, expectAssistantText, screenshot }) {
  for (const testId of ["history", "usage"]) {
    await page.waitForSelector(`[data-testid=${testId}]`, { timeout: 10 * SECOND }).catch(async () => {
      throw new Error(`no [data-testid=${testId}] on the page: is the component mounted in the RUNNING instance view?\npage shows:\n${await pageText(page)}`);
    });
  }

  // ---- the conversation, listed and readable (ListSessions, ListMessages)
  const deadline = Date.now() + SYNCED_WITHIN;
  let seen = null;
  for (let round = 1; ; round++) {
    await refreshAndWait(page, "history", "history-refresh", "history-error");
    const sessions = await page.$$eval("[data-testid=history-session]", (els) =>
      els.map((el) => ({ id: el.dataset.sessionId, text: el.innerText.replace(/\s+/g, " ") })),
    );
    if (sessions.length > 0) {
      const first = sessions[0];
      await page.click("[data-testid=history-session]");
      // The transcript of that session, loaded (or its error).
      seen = await waitOnChange(
        page,
        `the messages of the conversation ${first.id} (${first.text})`,
        LOAD_WITHIN,
        (sessionId) => {
          const box = document.querySelector("[data-testid=history-transcript]");
          if (!box || box.dataset.sessionId !== sessionId) return null;
          const error = box.querySelector("[data-testid=history-messages-error]");
          if (error) return { error: `${error.dataset.code ?? ""} ${error.textContent}` };
          if (box.dataset.state !== "ready") return null;
          const messages = [...box.querySelectorAll("[data-testid=history-message]")].map((el) => ({
            role: el.dataset.role,
            text: (el.querySelector("[data-testid=history-message-text]") ?? el).textContent,
          }));
          return { error: null, messages };
        },
        first.id,
      );
      if (seen.error !== null) throw new Error(`the conversation's messages failed to load: ${seen.error}`);
      const has = (role, text) => seen.messages.some((m) => m.role === role && m.text.includes(text));
      if (has("user", expectUserText) && has("assistant", expectAssistantText)) {
        // And on screen in the page's own terms (the selectors the brief names).
        await waitOnChange(
          page,
          "the user's and the assistant's messages in the history",
          10 * SECOND,
          (user, assistant) => {
            const shown = (role, text) =>
              [...document.querySelectorAll(`[data-testid=history-message][data-role=${role}]`)].some((el) =>
                el.textContent.includes(text),
              );
            return shown("user", user) && shown("assistant", assistant);
          },
          expectUserText,
          expectAssistantText,
        );
        break;
      }
    }
    if (Date.now() + REFRESH_EVERY > deadline) {
      throw new Error(
        `the conversation was not in the history within ${SYNCED_WITHIN / SECOND} s (${round} refreshes): ` +
          `want a user message containing ${JSON.stringify(expectUserText)} and an assistant message containing ` +
          `${JSON.stringify(expectAssistantText)} in the most recent conversation; ` +
          `sessions: ${JSON.stringify(sessions)}; its messages: ${JSON.stringify(seen?.messages ?? null)}\n` +
          `history shows:\n${await pageText(page, "[data-testid=history]")}`,
      );
    }
    await sleep(REFRESH_EVERY); // synced data arrives on the agent's schedule, not on a page event
  }

  // ---- counted in the usage (GetOverview, GetUsage DAY)
  let usage = null;
  for (let round = 1; ; round++) {
    await refreshAndWait(page, "usage", "usage-refresh", "usage-error");
    usage = await page.evaluate(() => {
      const today = document.querySelector("[data-testid=usage-today-messages]");
      const raw = today?.dataset.value ?? today?.textContent ?? "";
      const bars = [...document.querySelectorAll("[data-testid=usage-chart] [data-testid=usage-bar]")].map((el) =>
        Number(el.dataset.messages),
      );
      return { todayText: today?.textContent ?? null, today: Number(raw.replace(/[^\d]/g, "") || NaN), bars };
    });
    if (usage.today >= 2 && usage.bars.some((n) => n >= 2)) break;
    if (Date.now() + REFRESH_EVERY > deadline + SYNCED_WITHIN / 2) {
      throw new Error(
        `the usage does not count the conversation (${round} refreshes): today's messages ` +
          `${JSON.stringify(usage.todayText)} (want >= 2), bars ${JSON.stringify(usage.bars)} (want one >= 2)\n` +
          `usage shows:\n${await pageText(page, "[data-testid=usage]")}`,
      );
    }
    await sleep(REFRESH_EVERY);
  }
  if (usage.bars.length !== 30) throw new Error(`the chart has ${usage.bars.length} bars, want one per day of the last 30`);
  const titled = await page.$$eval("[data-testid=usage-bar]", (els) => els.every((el) => el.querySelector("title")?.textContent));
  if (!titled) throw new Error("every bar has a <title> (its day and count)");

  await screenshot("web-panel-history-usage");
  return { messages: seen?.messages ?? [], todayMessages: usage.today, bars: usage.bars };
}
