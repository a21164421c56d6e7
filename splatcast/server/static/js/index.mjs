// Sequence list (/): GET /v1/sequences, one row per sequence linking to its player.
const token = new URLSearchParams(location.search).get("token");
const q = token ? `?token=${encodeURIComponent(token)}` : "";

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function refresh() {
  const rows = document.getElementById("rows");
  try {
    const res = await fetch(`/v1/sequences${q}`);
    if (!res.ok) throw new Error(`GET /v1/sequences: HTTP ${res.status}`);
    const list = await res.json();
    rows.replaceChildren(...list.map((s) => {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      const a = document.createElement("a");
      a.href = `/view/${encodeURIComponent(s.id)}${q}`;
      a.textContent = s.name || s.id;
      name.append(a);
      tr.append(name, cell(s.id), cell(s.status), cell(s.frames), cell(s.sh_degree ?? "-"),
        cell(s.fps), cell(s.ratio ? `${s.ratio}x` : "-"), cell(s.subscribers));
      return tr;
    }));
    if (!list.length) rows.replaceChildren(Object.assign(document.createElement("tr"), { innerHTML: '<td colspan="8">no sequences yet: upload one with <code>splatcast upload</code></td>' }));
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = String(e.message || e);
  }
}

refresh();
setInterval(refresh, 3000);
