// Placeholder of the rule studio's page: lists the shops the JSON API
// (/studio/api/, docs/studio.md) reports.
"use strict";

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.code + ": " + body.message);
  }
  return body;
}

async function main() {
  const status = document.getElementById("status");
  try {
    const info = await getJson("/studio/api/info");
    const { shops } = await getJson("/studio/api/shops");
    status.textContent = "Vitrine " + info.version + ": " + shops.length + " shop(s)";
    const list = document.getElementById("shops");
    for (const s of shops) {
      const li = document.createElement("li");
      li.textContent = s.shop + " (revision " + s.revision + ", " + s.timezone + ")";
      list.appendChild(li);
    }
  } catch (e) {
    status.textContent = String(e);
  }
}

main();
