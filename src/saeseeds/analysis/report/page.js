// report.html's script: the feature table of each group (sorted, filtered, and rendered a
// screenful of rows at a time) and the card of one feature across seeds. Data comes from the
// JSON element #page-data (written by saeseeds.analysis.report.html). Corpus text only ever
// reaches the page through textContent: no string from the data is parsed as HTML.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("page-data").textContent);
  const ROW_HEIGHT = 30; // px; must match .row's height in page.css
  const OVERSCAN = 10; // rows rendered above and below the visible ones
  const ROW_CONTEXT_CHARS = 48; // text kept before the firing token in a row's context cell
  const $ = (id) => document.getElementById(id);
  const state = {
    groupIndex: 0,
    group: null,
    columns: [],
    view: [], // feature indices of the reference seed, filtered and sorted
    sortKey: "feature",
    sortDirection: 1,
    searchTexts: null, // lower-cased contexts per feature, built on the first search
    cardPosition: null,
  };

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = String(text);
    return element;
  }

  function shown(text) {
    return text.replace(/\r?\n/g, "\u21b5");
  }

  function percent(frequency) {
    if (frequency === null || frequency === undefined) return "\u2013";
    if (frequency === 0) return "never";
    const value = frequency * 100;
    return (value >= 0.1 ? value.toFixed(2) : value.toPrecision(2)) + "%";
  }

  function reappearsIn(group, feature) {
    const others = group.seeds.length - 1;
    const value = group.reappearance[feature];
    return value === null ? "\u2013" : Math.round(value * others) + " of " + others;
  }

  function firesOn(frequency) {
    return frequency === 0 ? "never fires on any" : "fires on " + percent(frequency);
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "\u2013" : value.toFixed(digits);
  }

  // Decoder cosine between the versions of feature i in seed positions a and b.
  function versionCosine(group, feature, a, b) {
    if (a === b) return 1;
    const low = Math.min(a, b);
    const high = Math.max(a, b);
    const seeds = group.seeds.length;
    const perFeature = (seeds * (seeds - 1)) / 2;
    const offset = low * seeds - (low * (low + 1)) / 2 + (high - low - 1);
    return group.cosines[feature * perFeature + offset];
  }

  function contextsOf(group, seedPosition, latent) {
    return group.contexts[seedPosition][String(latent)] || [];
  }

  function contextNode(context, strongest, className, clipBefore) {
    const [before, token, after, activation] = context;
    const line = node("span", className);
    let prefix = shown(before);
    if (clipBefore && prefix.length > ROW_CONTEXT_CHARS) {
      prefix = "\u2026" + prefix.slice(prefix.length - ROW_CONTEXT_CHARS);
    }
    const mark = node("mark", null, shown(token));
    const strength = strongest > 0 ? Math.max(0, activation) / strongest : 1;
    mark.style.backgroundColor = "rgba(255, 128, 0, " + (0.12 + 0.78 * strength).toFixed(3) + ")";
    mark.title = "activation " + activation;
    line.append(node("span", "before", prefix), mark, node("span", "after", shown(after)));
    return line;
  }

  function noContexts(group) {
    if (group.has_contexts) return "no held-out context: it never fired on held-out text";
    return group.has_text ? "contexts left out (report.examples_per_feature=0)" : "no text data";
  }

  function columnsOf(group) {
    const columns = [
      { key: "feature", title: "feature", width: "78px", value: (i) => i, text: (i) => "#" + i,
        tip: "latent of seed " + group.seeds[0] + " (the reference seed)" },
      { key: "frequency", title: "fires on", width: "78px", value: (i) => group.frequency[0][i],
        text: (i) => percent(group.frequency[0][i]), tip: "share of held-out tokens it fires on" },
    ];
    if (group.reappearance) {
      columns.push({ key: "reappearance", title: "reappears in", width: "96px",
        value: (i) => group.reappearance[i], text: (i) => reappearsIn(group, i),
        tip: "other seeds where it has a match of decoder cosine \u2265 the reappearance threshold" });
      const order = { stable: 2, partial: 1, unstable: 0 };
      columns.push({ key: "stability", title: "stability", width: "78px",
        value: (i) => order[group.stability[i]], text: (i) => group.stability[i],
        className: (i) => "label-" + group.stability[i] });
    }
    columns.push({ key: "best", title: "best match", width: "84px", value: (i) => group.best[i],
      text: (i) => fixed(group.best[i], 3), tip: "best-match cosine, mean over the other seeds" });
    if (group.beyond) {
      columns.push({ key: "beyond", title: "beyond geometry", width: "90px",
        value: (i) => group.beyond[i], text: (i) => (group.beyond[i] ? "yes" : ""),
        className: (i) => (group.beyond[i] ? "label-beyond" : ""),
        tip: "best match above the geometry control's 95th percentile (" +
          fixed(group.beyond_threshold, 3) + ")" });
    }
    if (group.nearest) {
      columns.push({ key: "nearest", title: "nearest in own dict.", width: "86px",
        value: (i) => group.nearest[i], text: (i) => fixed(group.nearest[i], 3) +
          (group.duplicate && group.duplicate[i] ? " dup" : ""),
        className: (i) => (group.duplicate && group.duplicate[i] ? "label-duplicate" : ""),
        tip: "decoder cosine of the nearest other live feature of seed " + group.seeds[0] +
          "; near-duplicate at \u2265 " + group.duplicate_threshold });
    }
    group.seeds.slice(1).forEach((seed, offset) => {
      const position = offset + 1;
      columns.push({ key: "seed" + position, title: "seed " + seed, width: "104px",
        value: (i) => versionCosine(group, i, 0, position),
        text: (i) => "#" + group.latents[position][i] + " " +
          fixed(versionCosine(group, i, 0, position), 2),
        tip: "best match in seed " + seed + ": latent and decoder cosine" });
    });
    columns.push({ key: "context", title: "strongest context (seed " + group.seeds[0] + ")",
      width: "minmax(220px, 1fr)", value: null, render: (i) => {
        const contexts = contextsOf(group, 0, i);
        if (!contexts.length) return node("span", "muted", group.has_contexts ? "none" : "");
        return contextNode(contexts[0], contexts[0][3], "context", true);
      } });
    return columns;
  }

  function compare(a, b) {
    const column = state.columns.find((c) => c.key === state.sortKey);
    const x = column.value(a);
    const y = column.value(b);
    const missingX = x === null || x === undefined;
    const missingY = y === null || y === undefined;
    if (missingX || missingY) return missingX === missingY ? a - b : missingX ? 1 : -1;
    return x === y ? a - b : (x < y ? -1 : 1) * state.sortDirection;
  }

  function searchText(feature) {
    const group = state.group;
    if (!state.searchTexts) state.searchTexts = new Array(group.n);
    if (state.searchTexts[feature] === undefined) {
      const pieces = [];
      group.seeds.forEach((_, position) => {
        for (const context of contextsOf(group, position, group.latents[position][feature])) {
          pieces.push(context[0] + context[1] + context[2]);
        }
      });
      state.searchTexts[feature] = pieces.join("\n").toLowerCase();
    }
    return state.searchTexts[feature];
  }

  function keeps(feature) {
    const group = state.group;
    if ($("filter-beyond").checked && !(group.beyond && group.beyond[feature])) return false;
    const minimum = Number($("filter-frequency").value);
    if (minimum >= 0 && !(group.frequency[0][feature] > minimum)) return false;
    const stability = $("filter-stability").value;
    if (stability !== "any" && (!group.stability || group.stability[feature] !== stability)) {
      return false;
    }
    const duplicates = $("filter-duplicates").value;
    const duplicate = Boolean(group.duplicate && group.duplicate[feature]);
    if ((duplicates === "hide" && duplicate) || (duplicates === "only" && !duplicate)) return false;
    const query = $("search").value.trim().toLowerCase();
    return !query || searchText(feature).includes(query);
  }

  function refresh() {
    const group = state.group;
    const view = [];
    for (let feature = 0; feature < group.n; feature++) if (keeps(feature)) view.push(feature);
    view.sort(compare);
    state.view = view;
    $("count").textContent = "showing " + view.length + " of " + group.n + " features of seed " +
      group.seeds[0];
    $("viewport").scrollTop = 0;
    renderHeader();
    renderRows();
  }

  function renderHeader() {
    const header = $("table-header");
    header.replaceChildren();
    for (const column of state.columns) {
      const cell = node("div", "cell", column.title);
      cell.setAttribute("role", "columnheader");
      if (column.tip) cell.title = column.tip;
      if (column.value) {
        cell.classList.add("sortable");
        cell.dataset.key = column.key;
        if (column.key === state.sortKey) {
          cell.classList.add(state.sortDirection > 0 ? "ascending" : "descending");
          cell.setAttribute("aria-sort", state.sortDirection > 0 ? "ascending" : "descending");
        }
        cell.addEventListener("click", () => sortBy(column.key));
      }
      header.append(cell);
    }
  }

  function sortBy(key) {
    if (state.sortKey === key) state.sortDirection = -state.sortDirection;
    else {
      state.sortKey = key;
      state.sortDirection = key === "feature" ? 1 : -1; // numbers: largest first
    }
    refresh();
  }

  function rowNode(feature, position) {
    const row = node("div", "row");
    row.setAttribute("role", "row");
    row.tabIndex = 0;
    row.dataset.feature = feature;
    row.style.top = position * ROW_HEIGHT + "px";
    for (const column of state.columns) {
      const cell = node("div", "cell");
      cell.setAttribute("role", "gridcell");
      if (column.render) cell.append(column.render(feature));
      else cell.textContent = column.text(feature);
      const extra = column.className ? column.className(feature) : "";
      if (extra) cell.classList.add(extra);
      row.append(cell);
    }
    row.addEventListener("click", () => openCard(position));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") openCard(position);
    });
    return row;
  }

  function renderRows() {
    const viewport = $("viewport");
    const spacer = $("spacer");
    spacer.style.height = state.view.length * ROW_HEIGHT + "px";
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(
      state.view.length,
      Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW_HEIGHT) + OVERSCAN,
    );
    const rows = document.createDocumentFragment();
    for (let position = first; position < last; position++) {
      rows.append(rowNode(state.view[position], position));
    }
    spacer.replaceChildren(rows);
  }

  function selectGroup(index) {
    state.groupIndex = index;
    state.group = DATA.groups[index];
    state.searchTexts = null;
    state.columns = columnsOf(state.group);
    const group = state.group;
    $("table").style.setProperty("--columns", state.columns.map((c) => c.width).join(" "));
    $("group-description").textContent = "seeds " + group.seeds.join(", ") + "; " +
      group.description + "; " + group.matching + " matching; rows: the features of seed " +
      group.seeds[0];
    const beyond = $("filter-beyond");
    beyond.disabled = !group.beyond;
    if (!group.beyond) beyond.checked = false;
    beyond.parentElement.title = group.beyond
      ? "best-match cosine above the geometry control's 95th percentile"
      : "this group has no geometry control (data.control=gaussian) to judge it against";
    $("filter-stability").disabled = !group.stability;
    $("filter-duplicates").disabled = !group.duplicate;
    $("search").disabled = !group.has_contexts;
    const which = group.n_full >= group.n ? "Every feature's card shows"
      : "The " + group.n_full + " features with the highest best-match cosine show";
    const rest = group.n_full >= group.n ? "" : " in their card, the others their strongest one";
    $("table-note").textContent = group.has_contexts
      ? "Contexts: " + which + " up to " + group.per_feature + " contexts per seed" + rest +
        "; the search looks through the contexts on this page. Every context is in each run's " +
        "top_examples.json."
      : group.has_text ? "No contexts on this page: report.examples_per_feature=0."
        : "No contexts: these runs' data had no text (no top_examples.json).";
    for (const block of document.querySelectorAll(".figures[data-group]")) {
      block.hidden = block.dataset.group !== String(index);
    }
    refresh();
  }

  function cosineColour(value) {
    const strength = Math.max(0, Math.min(1, value));
    return "hsl(212, 70%, " + (97 - 55 * strength).toFixed(1) + "%)";
  }

  function matrixNode(group, feature) {
    const table = node("table", "versions");
    const head = node("tr");
    head.append(node("th", null, ""));
    group.seeds.forEach((seed, position) => {
      head.append(node("th", null, "seed " + seed + " #" + group.latents[position][feature]));
    });
    table.append(head);
    group.seeds.forEach((seed, a) => {
      const row = node("tr");
      row.append(node("th", null, "seed " + seed + " #" + group.latents[a][feature]));
      group.seeds.forEach((_, b) => {
        const value = versionCosine(group, feature, a, b);
        const cell = node("td", null, value.toFixed(2));
        cell.style.backgroundColor = cosineColour(value);
        if (value > 0.6) cell.style.color = "#fff";
        row.append(cell);
      });
      table.append(row);
    });
    return table;
  }

  function badges(group, feature) {
    const line = node("p", "badges");
    if (group.stability) line.append(node("span", "badge label-" + group.stability[feature],
      group.stability[feature]));
    if (group.beyond && group.beyond[feature]) {
      line.append(node("span", "badge label-beyond", "reproduced beyond geometry"));
    }
    if (group.duplicate && group.duplicate[feature]) {
      line.append(node("span", "badge label-duplicate", "near-duplicate in its dictionary"));
    }
    return line;
  }

  function seedColumn(group, feature, position) {
    const seed = group.seeds[position];
    const latent = group.latents[position][feature];
    const column = node("div", "seed-column");
    column.dataset.seed = seed;
    column.append(node("h4", null, "seed " + seed + " \u00b7 latent #" + latent));
    const facts = [];
    facts.push(position === 0 ? "reference" : "cosine to seed " + group.seeds[0] + ": " +
      versionCosine(group, feature, 0, position).toFixed(3));
    facts.push(firesOn(group.frequency[position][latent]) + " of held-out tokens");
    if (position > 0 && group.one_to_one) {
      const partner = group.one_to_one[position - 1].latents[feature];
      if (partner !== latent) {
        facts.push(partner < 0 ? "no one-to-one partner" : "one-to-one match: #" + partner +
          " (" + fixed(group.one_to_one[position - 1].cosines[feature], 3) + ")");
      }
    }
    column.append(node("p", "facts", facts.join(" \u00b7 ")));
    const contexts = contextsOf(group, position, latent);
    if (!contexts.length) {
      column.append(node("p", "muted", noContexts(group)));
      return column;
    }
    const list = node("ol", "contexts");
    const strongest = contexts[0][3];
    for (const context of contexts) {
      const item = node("li");
      item.append(contextNode(context, strongest, "context", false),
        node("span", "activation", context[3].toPrecision(3)));
      list.append(item);
    }
    column.append(list);
    return column;
  }

  function openCard(position) {
    if (position < 0 || position >= state.view.length) return;
    state.cardPosition = position;
    const group = state.group;
    const feature = state.view[position];
    $("card-title").textContent = group.label + " \u2014 seed " + group.seeds[0] + " feature #" +
      feature;
    const body = $("card-body");
    body.replaceChildren();
    const facts = [firesOn(group.frequency[0][feature]) + " of held-out tokens",
      "best-match cosine " + fixed(group.best[feature], 3) + " (mean over the other seeds)"];
    if (group.reappearance) facts.push("reappears in " + reappearsIn(group, feature) +
      " other seeds");
    body.append(node("p", "facts", facts.join(" \u00b7 ")), badges(group, feature));
    const matrix = node("div", "matrix");
    matrix.append(node("h4", null, "Decoder cosines between the versions"),
      matrixNode(group, feature));
    body.append(matrix);
    const columns = node("div", "seed-columns");
    columns.style.gridTemplateColumns = "repeat(" + group.seeds.length + ", minmax(230px, 1fr))";
    group.seeds.forEach((_, seedPosition) => {
      columns.append(seedColumn(group, feature, seedPosition));
    });
    body.append(columns);
    if (group.has_contexts && !group.full[feature]) {
      body.append(node("p", "note", "Only each version's strongest context is on this page " +
        "for this feature; all are in the runs' top_examples.json: " + group.runs.join(", ")));
    }
    $("card").hidden = false;
    $("card-close").focus();
    history.replaceState(null, "", "#group=" + state.groupIndex + "&feature=" + feature);
  }

  function closeCard() {
    $("card").hidden = true;
    state.cardPosition = null;
    history.replaceState(null, "", "#");
  }

  function openFromAddress() {
    const match = /group=(\d+)&feature=(\d+)/.exec(location.hash);
    if (!match || Number(match[1]) >= DATA.groups.length) return;
    if (Number(match[1]) !== state.groupIndex) {
      $("group").value = match[1];
      selectGroup(Number(match[1]));
    }
    const position = state.view.indexOf(Number(match[2]));
    if (position >= 0) {
      $("viewport").scrollTop = Math.max(0, position * ROW_HEIGHT - ROW_HEIGHT * 3);
      openCard(position);
    }
  }

  function start() {
    const select = $("group");
    DATA.groups.forEach((group, index) => {
      const option = node("option", null, group.label + (group.role === "control"
        ? " (control)" : ""));
      option.value = String(index);
      select.append(option);
    });
    if (!DATA.groups.length) {
      $("count").textContent = "no group has features to show";
      return;
    }
    select.addEventListener("change", () => selectGroup(Number(select.value)));
    for (const id of ["filter-beyond", "filter-frequency", "filter-stability",
      "filter-duplicates"]) {
      $(id).addEventListener("change", refresh);
    }
    let typing = null;
    $("search").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(refresh, 150);
    });
    let frame = null;
    $("viewport").addEventListener("scroll", () => {
      if (frame === null) frame = requestAnimationFrame(() => { frame = null; renderRows(); });
    });
    $("card-close").addEventListener("click", closeCard);
    $("card-previous").addEventListener("click", () => openCard(state.cardPosition - 1));
    $("card-next").addEventListener("click", () => openCard(state.cardPosition + 1));
    $("card").addEventListener("click", (event) => {
      if (event.target === $("card")) closeCard();
    });
    document.addEventListener("keydown", (event) => {
      if ($("card").hidden) return;
      if (event.key === "Escape") closeCard();
      else if (event.key === "ArrowLeft") openCard(state.cardPosition - 1);
      else if (event.key === "ArrowRight") openCard(state.cardPosition + 1);
    });
    selectGroup(0);
    openFromAddress();
    performance.mark("saeseeds-first-render");
    document.body.dataset.ready = "true";
  }

  start();
})();
