// The LaViC chat page: the thread grows like a Reddit post (first message = <submission>,
// replies = <comment>), and every turn asks POST /recommend for the whole thread.
// Everything from the user or the catalogue is put on the page as text, never as HTML.
"use strict";

(function () {
  const thread = document.getElementById("thread");
  const form = document.getElementById("composer");
  const input = document.getElementById("message");
  const send = document.getElementById("send");
  const status = document.getElementById("status");
  const reset = document.getElementById("reset");

  const messages = []; // the user's messages, in order

  // A message may not close or open a thread tag of its own.
  function clean(text) {
    return text.replace(/<\/?(submission|comment)>/gi, " ").trim();
  }

  function conversation() {
    return messages
      .map((m, i) => (i === 0 ? `<submission>${m}</submission>\n` : `<comment>${m}</comment>\n`))
      .join("");
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // 99.7%, 42%, 0.4%, <0.1%: whole percents where that is precise enough.
  function percent(p) {
    if (p < 0.001) return "<0.1%";
    return `${(100 * p).toFixed(p >= 0.995 || p < 0.01 ? 1 : 0)}%`;
  }

  function addUser(text) {
    const li = el("li", "turn user");
    li.appendChild(el("div", "who", messages.length === 1 ? "You" : "You (reply)"));
    li.appendChild(el("div", "bubble", text));
    thread.appendChild(li);
  }

  function candidateCard(c, isPick) {
    const card = el("article", isPick ? "candidate pick" : "candidate");
    card.dataset.itemId = c.item_id;
    const frame = el("div", "frame");
    if (c.has_image) {
      const img = document.createElement("img");
      img.src = `/items/${encodeURIComponent(c.item_id)}/image`;
      img.alt = c.title;
      img.loading = "eager";
      frame.appendChild(img);
    } else {
      frame.appendChild(el("span", "no-image", "no image"));
    }
    card.appendChild(frame);
    if (isPick) card.appendChild(el("div", "badge", "Recommended"));
    card.appendChild(el("h3", "title", c.title));
    const meta = el("div", "meta");
    meta.appendChild(el("span", "score", percent(c.score)));
    meta.appendChild(el("span", "item-id", c.item_id));
    card.appendChild(meta);
    const bar = el("div", "bar");
    const fill = el("div", "fill");
    fill.style.width = `${Math.max(1, Math.round(100 * c.score))}%`;
    bar.appendChild(fill);
    card.appendChild(bar);
    return card;
  }

  function addAnswer(result) {
    const li = el("li", "turn assistant");
    li.appendChild(el("div", "who", "LaViC"));
    const bubble = el("div", "bubble");
    const line = el("p", "pick-line");
    line.appendChild(document.createTextNode("I recommend "));
    line.appendChild(el("strong", "pick-title", result.title));
    line.appendChild(document.createTextNode(` (${percent(result.score)} among ${result.candidates.length} candidates).`));
    bubble.appendChild(line);
    if (result.conversation_truncated) {
      bubble.appendChild(el("p", "note", "The conversation was shortened to fit the model."));
    }
    const grid = el("div", "candidates");
    result.candidates.forEach((c, i) => grid.appendChild(candidateCard(c, i === 0)));
    bubble.appendChild(grid);
    li.appendChild(bubble);
    thread.appendChild(li);
  }

  function addError(text) {
    const li = el("li", "turn error");
    li.appendChild(el("div", "bubble", text));
    thread.appendChild(li);
  }

  async function ask() {
    const body = JSON.stringify({ conversation: conversation() });
    const response = await fetch("/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body,
    });
    let payload = null;
    try {
      payload = await response.json();
    } catch (e) {
      payload = null;
    }
    if (!response.ok) {
      const detail = payload && payload.detail ? payload.detail : response.statusText;
      throw new Error(`${response.status}: ${detail}`);
    }
    return payload;
  }

  function busy(on) {
    send.disabled = on;
    input.disabled = on;
    status.textContent = on ? "Looking at the products…" : "";
    document.body.classList.toggle("busy", on);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = clean(input.value);
    if (!text) return;
    messages.push(text);
    addUser(text);
    input.value = "";
    busy(true);
    try {
      addAnswer(await ask());
      input.placeholder = "Reply to refine, e.g. cheaper, or in blue";
    } catch (err) {
      messages.pop(); // the thread did not grow: the user can edit and resend
      addError(`Sorry, that did not work (${err.message}).`);
    } finally {
      busy(false);
      reset.hidden = messages.length === 0;
      input.focus();
      thread.lastElementChild && thread.lastElementChild.scrollIntoView({ block: "start" });
    }
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  // Say plainly when the served model is the offline `tiny` stand-in (GET /health).
  fetch("/health")
    .then((response) => response.json())
    .then((health) => {
      document.getElementById("stand-in").hidden = !health.stand_in;
    })
    .catch(() => {});

  reset.addEventListener("click", () => {
    messages.length = 0;
    thread.replaceChildren();
    reset.hidden = true;
    input.placeholder = "e.g. I need a waterproof bag for cycling to work, something bright";
    input.focus();
  });
})();
