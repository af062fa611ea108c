// The labeling page: one grid for browse, similar, upload and review modes, filled from the JSON API.
// Every name from the server is put in with .text() or .attr(), never parsed as HTML.
$(function () {
  "use strict";
  const csrf = $('meta[name="csrf-token"]').attr("content");
  const $body = $("body");
  const mode = $body.data("mode");
  const queryId = $body.data("image-id");
  const $grid = $("#grid");
  let items = [];            // what the grid shows, in order
  let selected = new Set();  // image ids
  let anchor = null;         // index of the last plain click, for shift-click ranges
  let focus = -1;            // index of the keyboard focus
  let nextOffset = null;
  let loader = null;         // function(offset) -> jqXHR of the current view
  let upload = null;         // the dropped File, for "load more" of an upload search
  let reviewTaxon = null;

  function say(text, isError) {
    $("#message").text(text).toggleClass("error", !!isError);
  }

  function fail(xhr) {
    const msg = (xhr.responseJSON && xhr.responseJSON.error) || xhr.statusText || "request failed";
    say(msg, true);
  }

  function api(method, url, body) {
    return $.ajax({
      method: method, url: url, dataType: "json",
      data: body === undefined ? undefined : JSON.stringify(body),
      contentType: "application/json", headers: { "X-CSRF-Token": csrf },
    }).fail(fail);
  }

  function caption(item) {
    let text = item.taxon ? item.taxon : "unlabeled";
    if (item.status && item.status !== "validated") text += " (" + item.status + (item.score != null ? " " + item.score.toFixed(2) : "") + ")";
    if (item.distance != null) text = item.distance.toFixed(3) + " · " + text;
    return text;
  }

  function tile(item, index) {
    const $t = $("<div>").addClass("tile").attr({ "data-id": item.id, "data-index": index, title: "image " + item.id });
    $t.toggleClass("selected", selected.has(item.id)).addClass(item.status || "unlabeled");
    $t.append($("<img>").attr({ src: item.thumb, alt: "image " + item.id, loading: "lazy", draggable: "false" }));
    $t.append($("<div>").addClass("cap").text(caption(item)));
    return $t;
  }

  function render(newItems, append) {
    if (!append) { items = []; $grid.empty(); selected.clear(); anchor = null; focus = -1; }
    const frag = $(document.createDocumentFragment());
    newItems.forEach(function (item) { frag.append(tile(item, items.length)); items.push(item); });
    $grid.append(frag);
    updateCount();
  }

  function show(resp, append, note) {
    render(resp.items, append);
    nextOffset = resp.next_offset;
    $("#more").prop("hidden", nextOffset == null);
    const total = resp.total != null ? " of " + resp.total : "";
    say((note ? note + "; " : "") + items.length + total + " images shown");
  }

  // `note` reports the action that caused the reload, so the reload does not hide it.
  function load(fn, note) {
    loader = fn;
    fn(0).done(function (resp) { show(resp, false, note); });
  }

  function more() {
    if (nextOffset == null || !loader) return;
    loader(nextOffset).done(function (resp) { show(resp, true); });
  }

  function searchParams(offset) {
    const p = { k: $("#s-k").val(), metric: $("#s-metric").val(), method: $("#s-method").val(), offset: offset };
    if ($("#s-todo").prop("checked")) p.todo = "1";
    return p;
  }

  function browseParams(offset) {
    const p = { offset: offset, limit: $("#f-limit").val(), sort: $("#f-sort").val() };
    ["status", "taxon", "sample", "instrument", "date_from", "date_to", "depth_min", "depth_max", "ref"].forEach(function (k) {
      const v = $("#f-" + k).val();
      if (v) p[k] = v;
    });
    return p;
  }

  function openSimilar(id) { window.location.href = "/similar/" + encodeURIComponent(id); }

  function searchUpload(file) {
    upload = file;
    load(function (offset) {
      const form = new FormData();
      form.append("file", upload);
      return $.ajax({
        method: "POST", url: "/api/search?" + $.param(searchParams(offset)), data: form,
        processData: false, contentType: false, dataType: "json", headers: { "X-CSRF-Token": csrf },
      }).fail(fail);
    });
  }

  // ---------------------------------------------------------------- selection

  function updateCount() {
    $("#count").text(selected.size + " selected");
  }

  function setSelected(index, on) {
    const id = items[index].id;
    if (on) selected.add(id); else selected.delete(id);
    $grid.children().eq(index).toggleClass("selected", on);
  }

  function setFocus(index) {
    if (!items.length) return;
    focus = Math.max(0, Math.min(items.length - 1, index));
    $grid.children().removeClass("focus").eq(focus).addClass("focus");
    const el = $grid.children().get(focus);
    if (el && el.scrollIntoView) el.scrollIntoView({ block: "nearest" });
  }

  $grid.on("click", ".tile", function (ev) {
    const index = Number($(this).attr("data-index"));
    if (ev.shiftKey && anchor !== null) {
      const lo = Math.min(anchor, index), hi = Math.max(anchor, index);
      for (let i = lo; i <= hi; i++) setSelected(i, true);
    } else {
      setSelected(index, !selected.has(items[index].id));
      anchor = index;
    }
    setFocus(index);
    showDetail(items[index].id);
    updateCount();
  });
  $grid.on("dblclick", ".tile", function () { openSimilar($(this).attr("data-id")); });

  function selectAll() { items.forEach(function (_, i) { setSelected(i, true); }); updateCount(); }
  function selectFirst() {
    const n = parseInt($("#first-n").val(), 10);
    if (!(n > 0)) { say("N must be a positive number", true); return; }
    clearSelection();
    for (let i = 0; i < Math.min(n, items.length); i++) setSelected(i, true);
    updateCount();
  }
  function clearSelection() { items.forEach(function (_, i) { setSelected(i, false); }); updateCount(); }

  // ---------------------------------------------------------------- detail and history

  function showDetail(id) {
    $("#detail").prop("hidden", false);
    $("#detail-img").attr("src", "/images/" + encodeURIComponent(id) + "/file");
    $.getJSON("/api/images/" + encodeURIComponent(id)).done(function (info) {
      const $dl = $("#detail-meta").empty();
      [["id", info.id], ["file", info.original_name], ["size", info.width + "×" + info.height], ["sample", info.sample],
        ["instrument", info.instrument], ["label", info.taxon ? info.taxon + " (" + info.status + ")" : "none"]].forEach(function (kv) {
        $dl.append($("<dt>").text(kv[0]), $("<dd>").text(kv[1] == null ? "" : String(kv[1])));
      });
      $dl.append($("<dd>").append($("<a>").attr("href", "/similar/" + info.id).text("find similar (S)")));
    }).fail(fail);
    $.getJSON("/api/images/" + encodeURIComponent(id) + "/annotations").done(function (resp) {
      const $ol = $("#history").empty();
      if (!resp.annotations.length) $ol.append($("<li>").text("no annotations yet"));
      resp.annotations.forEach(function (a) {
        const text = a.created_at.replace("T", " ").slice(0, 19) + " " + a.annotator + ": " + a.taxon + " (" + a.status + ", " + a.source + ")";
        $ol.append($("<li>").text(text).toggleClass("retracted", a.retracted).toggleClass("current", a.current));
      });
    }).fail(fail);
  }

  // ---------------------------------------------------------------- labeling

  function markTiles(ids, taxon, status) {
    items.forEach(function (item, i) {
      if (ids.indexOf(item.id) < 0) return;
      if (taxon !== null) item.taxon = taxon;
      item.status = status; item.score = null;
      $grid.children().eq(i).replaceWith(tile(item, i));
    });
  }

  function label(status, create) {
    const ids = Array.from(selected);
    if (!ids.length) { say("select images first", true); return; }
    const taxon = $("#label-taxon").val().trim();
    if (status === "validated" && !taxon) { say("type a taxon first (L)", true); $("#label-taxon").focus(); return; }
    const body = { image_ids: ids, taxon: taxon || null, status: status };
    if (create) body.new_taxon = true;
    $.ajax({
      method: "POST", url: "/api/annotations", dataType: "json", data: JSON.stringify(body),
      contentType: "application/json", headers: { "X-CSRF-Token": csrf },
    }).done(function (r) {
      markTiles(ids, status === "dubious" && !taxon ? null : taxon, status);
      clearSelection();
      say((status === "dubious" ? "marked dubious: " : "labelled " + taxon + ": ") + r.images + " images (Z to undo)");
    }).fail(function (xhr) {
      const msg = xhr.responseJSON && xhr.responseJSON.error;
      if (xhr.status === 400 && msg && msg.indexOf("unknown taxon") === 0 && !create &&
          window.confirm("Create the new taxon “" + taxon + "”?")) {
        label(status, true);
      } else {
        fail(xhr);
      }
    });
  }

  function undo() {
    api("POST", "/api/undo").done(function (r) {
      const note = "undone: " + r.kind + " of " + r.images + " images";
      say(note);
      if (loader) load(loader, note);
    });
  }

  function accept() {
    const ids = items.filter(function (i) { return i.status === "predicted" && i.taxon === reviewTaxon; })
      .map(function (i) { return i.id; });
    if (!ids.length) { say("nothing on this page to accept", true); return; }
    api("POST", "/api/suggestions/accept", { image_ids: ids }).done(function (r) {
      showGroup(reviewTaxon, "accepted " + r.images + " predictions of " + reviewTaxon);
    });
  }

  function refreshTaxa() {
    const q = $("#label-taxon").val() || "";
    $.getJSON("/api/taxa", { q: q, limit: 30 }).done(function (resp) {
      const $dl = $("#taxa-list").empty();
      resp.taxa.forEach(function (t) { $dl.append($("<option>").attr("value", t.name)); });
    });
  }

  // ---------------------------------------------------------------- review mode

  function showGroup(taxon, note) {
    reviewTaxon = taxon;
    load(function (offset) { return api("GET", "/api/suggestions?" + $.param({ taxon: taxon, offset: offset, limit: 50 })); }, note);
    $("#label-taxon").val("");
  }

  function loadGroups() {
    api("GET", "/api/suggestions").done(function (resp) {
      const $g = $("#groups").empty();
      if (!resp.groups.length) say("no predictions yet: label some images, then press Refresh suggestions");
      resp.groups.forEach(function (g) {
        $g.append($("<button>").addClass("group").attr("data-taxon", g.taxon)
          .text(g.taxon + " · " + g.images + " · " + g.mean_score.toFixed(2)));
      });
      if (resp.groups.length && reviewTaxon === null) showGroup(resp.groups[0].taxon);
    });
  }
  $("#groups").on("click", ".group", function () { showGroup($(this).attr("data-taxon")); });
  $("#refresh").on("click", function () {
    say("refreshing suggestions…");
    api("POST", "/api/suggestions/refresh").done(function (r) {
      say(r.predicted_images + " images have a prediction (" + r.predictions_written + " updated)");
      loadGroups();
    });
  });

  // ---------------------------------------------------------------- wiring

  $("#more").on("click", more);
  $("#apply").on("click", function () { load(function (o) { return api("GET", "/api/images?" + $.param(browseParams(o))); }); });
  $("#s-apply").on("click", function () {
    load(function (o) { return api("GET", "/api/images/" + queryId + "/similar?" + $.param(searchParams(o))); });
  });
  $("#select-all").on("click", selectAll);
  $("#select-first").on("click", selectFirst);
  $("#clear").on("click", clearSelection);
  $("#label").on("click", function () { label("validated", false); });
  $("#dubious").on("click", function () { label("dubious", false); });
  $("#undo").on("click", undo);
  $("#accept").on("click", accept);
  $("#label-taxon").on("input", refreshTaxa).on("keydown", function (ev) {
    if (ev.key === "Enter") { ev.preventDefault(); label("validated", false); }
    if (ev.key === "Escape") { $(this).blur(); }
  });
  $("#upload").on("change", function () { if (this.files.length) searchUpload(this.files[0]); });
  $(document).on("dragover", function (ev) { ev.preventDefault(); $("#drop").addClass("over"); });
  $(document).on("drop", function (ev) {
    ev.preventDefault(); $("#drop").removeClass("over");
    const files = ev.originalEvent.dataTransfer && ev.originalEvent.dataTransfer.files;
    if (files && files.length) searchUpload(files[0]);
  });

  $(document).on("keydown", function (ev) {
    if ($(ev.target).is("input, select, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (k === "a") selectAll();
    else if (k === "f") selectFirst();
    else if (k === "Escape") clearSelection();
    else if (k === "l" || k === "/") { ev.preventDefault(); $("#label-taxon").focus(); }
    else if (k === "Enter" && ev.shiftKey && mode === "review") accept();
    else if (k === "Enter") label("validated", false);
    else if (k === "d") label("dubious", false);
    else if (k === "z" || k === "u") undo();
    else if (k === "m") more();
    else if (k === "s" && focus >= 0) openSimilar(items[focus].id);
    else if (k === "h" && focus >= 0) showDetail(items[focus].id);
    else if (k === "ArrowRight" || k === "ArrowDown") { ev.preventDefault(); setFocus(focus + (k === "ArrowDown" ? 5 : 1)); }
    else if (k === "ArrowLeft" || k === "ArrowUp") { ev.preventDefault(); setFocus(focus - (k === "ArrowUp" ? 5 : 1)); }
    else if (k === " " && focus >= 0) { ev.preventDefault(); setSelected(focus, !selected.has(items[focus].id)); updateCount(); }
  });

  refreshTaxa();
  if (mode === "browse") $("#apply").trigger("click");
  else if (mode === "similar") $("#s-apply").trigger("click");
  else if (mode === "review") loadGroups();
});
