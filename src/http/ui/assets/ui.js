// iotsupport web UI: the little the server-rendered pages need from a script.
//
// - Writes: forms and buttons with data-api-method / data-api-url call the JSON API with fetch(),
//   same-origin credentials, and X-CSRF-Token from <meta name="csrf-token"> when the page has it.
// - Firmware upload by drag and drop (or a file picker) with progress (XHR upload events).
// - The provisioning package: the API's base64 answer saved as a .bin file.
// - Live updates: the event stream (/api/sse/stream); when an event concerns the page (the
//   data-live* attributes of <main>), the page is fetched again and its <main> swapped, keeping
//   forms the person is editing. Device logs: history, then live lines from the same stream.
// No framework, no build step; listeners are delegated from document, so swapped content works.
(function () {
  'use strict';

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute('content') : null;

  function randomId() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return ('0' + b.toString(16)).slice(-2);
    }).join('');
  }
  var streamId = 'ui-' + randomId();

  function apiHeaders(extra) {
    var headers = {};
    if (extra) { for (var k in extra) { headers[k] = extra[k]; } }
    if (csrf) { headers['X-CSRF-Token'] = csrf; }
    return headers;
  }

  function signInAgain() {
    location.href = '/api/auth/login?redirect=' + encodeURIComponent(location.pathname + location.search);
  }

  // The person-readable message of a failed answer: the API envelope's `error` when there is one.
  function failure(status, data) {
    if (data && typeof data.error === 'string') { return data.error; }
    if (status === 403) { return 'You are not allowed to do this.'; }
    if (status === 413) { return 'The file is too large for this server.'; }
    if (status === 503) { return 'The service is unavailable right now; try again in a moment.'; }
    return 'The server answered with status ' + status + '.';
  }

  function api(method, url, body) {
    var options = { method: method, credentials: 'same-origin', headers: apiHeaders(null) };
    if (body !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).catch(function () {
      throw new Error('The server could not be reached. Check the connection and try again.');
    }).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (response.status === 401) { signInAgain(); }
        if (!response.ok) { throw new Error(failure(response.status, data)); }
        return data;
      });
    });
  }

  function flash(text, bad) {
    var box = document.getElementById('flash');
    if (!box) { return; }
    box.textContent = text;
    box.className = bad ? 'bad shown' : 'shown';
    clearTimeout(flash.timer);
    flash.timer = setTimeout(function () { box.className = ''; }, 6000);
  }

  function setStatus(container, text, bad) {
    var status = container && container.querySelector('[data-status]');
    if (!status) { flash(text, bad); return; }
    status.textContent = text;
    status.className = 'form-status' + (bad ? ' bad' : ' good');
  }

  // After a successful write: refresh the page, go elsewhere, or show a new device's secret.
  function done(how, data) {
    if (!how || how === 'refresh') { refresh(); return; }
    if (how.indexOf('go:') === 0) {
      var target = how.slice(3).replace('{id}', data && data.id !== undefined ? data.id : '');
      location.href = target;
      return;
    }
    if (how === 'device-secret' && data) { showSecret(data); }
  }

  function showSecret(device) {
    var dialog = document.getElementById('secret-dialog');
    if (!dialog) {
      dialog = document.createElement('dialog');
      dialog.id = 'secret-dialog';
      dialog.setAttribute('aria-labelledby', 'secret-title');
      document.body.appendChild(dialog);
    }
    dialog.replaceChildren();
    var h = document.createElement('h2');
    h.id = 'secret-title';
    h.textContent = 'Device ' + device.key + ' was created';
    var p = document.createElement('p');
    p.textContent = 'Its credential, shown only now (the service keeps only a hash). The device ' +
      'sends it as "Authorization: Bearer <credential>"; a provisioning package gives it one too.';
    var code = document.createElement('code');
    code.id = 'device-credential';
    code.className = 'secret';
    code.textContent = device.key + '.' + device.device_secret;
    var actions = document.createElement('p');
    var open = document.createElement('a');
    open.href = '/devices/' + device.id;
    open.textContent = 'Open the device';
    var close = document.createElement('button');
    close.type = 'button';
    close.textContent = 'Close';
    close.addEventListener('click', function () { dialog.close(); });
    actions.append(open, ' ', close);
    dialog.append(h, p, code, actions);
    dialog.showModal();
    refresh();
  }

  // Form fields as the API's JSON: checkboxes are booleans, data-type="int" numbers,
  // data-type="optional" null when blank; everything else the text as typed.
  function formBody(form) {
    var body = {};
    Array.prototype.forEach.call(form.elements, function (field) {
      if (!field.name || field.disabled) { return; }
      var type = field.getAttribute('data-type');
      if (field.type === 'checkbox') { body[field.name] = field.checked; }
      else if (type === 'int') { body[field.name] = parseInt(field.value, 10); }
      else if (type === 'optional' && field.value.trim() === '') { body[field.name] = null; }
      else { body[field.name] = field.value; }
    });
    return body;
  }

  function successText(el, data) {
    var text = el.getAttribute('data-success');
    if (!text) { return null; }
    var field = el.getAttribute('data-success-field');
    return field && data ? text.replace('{n}', data[field]) : text;
  }

  document.addEventListener('submit', function (event) {
    var form = event.target;
    if (form.hasAttribute('data-provision')) { event.preventDefault(); provision(form); return; }
    if (!form.hasAttribute('data-api-method')) { return; }
    event.preventDefault();
    var button = form.querySelector('[type="submit"]');
    if (button) { button.disabled = true; }
    setStatus(form, 'Saving…', false);
    api(form.getAttribute('data-api-method'), form.getAttribute('data-api-url'), formBody(form))
      .then(function (data) {
        form.removeAttribute('data-dirty');
        setStatus(form, '', false);
        var text = successText(form, data);
        if (text) { flash(text, false); }
        done(form.getAttribute('data-done'), data);
      }, function (error) { setStatus(form, error.message, true); })
      .then(function () { if (button) { button.disabled = false; } });
  });

  document.addEventListener('input', function (event) {
    var form = event.target.form;
    // Edited forms are kept as they are when the page refreshes: those that save through the API
    // (until saved) and the provisioning form (whose partition size must not snap back).
    if (form && form.id && (form.hasAttribute('data-api-method') || form.hasAttribute('data-provision'))) {
      form.setAttribute('data-dirty', '');
    }
  });

  document.addEventListener('click', function (event) {
    var button = event.target.closest('button[data-api-method]');
    if (!button || button.form) { return; }
    var question = button.getAttribute('data-confirm');
    if (question && !window.confirm(question)) { return; }
    var raw = button.getAttribute('data-body');
    var body;
    try { body = raw ? JSON.parse(raw) : undefined; } catch (e) { body = undefined; }
    button.disabled = true;
    api(button.getAttribute('data-api-method'), button.getAttribute('data-api-url'), body)
      .then(function (data) {
        var text = successText(button, data);
        flash(text || 'Done.', false);
        done(button.getAttribute('data-done'), data);
      }, function (error) { flash(error.message, true); })
      .then(function () { button.disabled = false; });
  });

  // --- Provisioning package -------------------------------------------------------------------
  function provision(form) {
    var size = form.elements.partition_size.value;
    var url = form.getAttribute('data-provision') + '?partition_size=' + encodeURIComponent(size);
    setStatus(form, 'Preparing the package…', false);
    api('GET', url).then(function (data) {
      var binary = atob(data.data);
      var bytes = new Uint8Array(binary.length);
      for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
      var link = document.createElement('a');
      link.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
      link.download = form.getAttribute('data-filename') || 'provisioning.bin';
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 10000);
      setStatus(form, 'Saved ' + link.download + ' (' + bytes.length + ' bytes).', false);
    }, function (error) { setStatus(form, error.message, true); });
  }

  // --- Firmware upload ------------------------------------------------------------------------
  function upload(zone, file) {
    var progress = zone.querySelector('progress');
    var xhr = new XMLHttpRequest();
    zone.setAttribute('data-busy', '');
    xhr.open('POST', zone.getAttribute('data-upload'));
    if (csrf) { xhr.setRequestHeader('X-CSRF-Token', csrf); }
    xhr.setRequestHeader('Content-Type', 'application/zip');
    progress.hidden = false;
    progress.value = 0;
    setStatus(zone, 'Uploading ' + file.name + '…', false);
    xhr.upload.addEventListener('progress', function (e) {
      if (e.lengthComputable) { progress.value = Math.round(e.loaded * 100 / e.total); }
    });
    xhr.addEventListener('load', function () {
      zone.removeAttribute('data-busy');
      progress.hidden = true;
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
      if (xhr.status === 401) { signInAgain(); return; }
      if (xhr.status >= 200 && xhr.status < 300) {
        setStatus(zone, 'Uploaded: version ' + data.firmware_version + ' is current now.', false);
        flash('Version ' + data.firmware_version + ' was uploaded and is current now.', false);
        refresh();
      } else {
        setStatus(zone, failure(xhr.status, data), true);
      }
    });
    xhr.addEventListener('error', function () {
      zone.removeAttribute('data-busy');
      progress.hidden = true;
      setStatus(zone, 'The upload failed: the server could not be reached.', true);
    });
    xhr.send(file);
  }

  document.addEventListener('change', function (event) {
    var zone = event.target.closest('[data-upload]');
    if (zone && event.target.files && event.target.files[0]) {
      upload(zone, event.target.files[0]);
      event.target.value = '';
    }
  });
  ['dragenter', 'dragover'].forEach(function (type) {
    document.addEventListener(type, function (event) {
      var zone = event.target.closest && event.target.closest('[data-upload]');
      if (!zone) { return; }
      event.preventDefault();
      zone.classList.add('over');
    });
  });
  document.addEventListener('dragleave', function (event) {
    var zone = event.target.closest && event.target.closest('[data-upload]');
    if (zone) { zone.classList.remove('over'); }
  });
  document.addEventListener('drop', function (event) {
    var zone = event.target.closest && event.target.closest('[data-upload]');
    if (!zone) { return; }
    event.preventDefault();
    zone.classList.remove('over');
    var files = event.dataTransfer && event.dataTransfer.files;
    if (files && files[0]) { upload(zone, files[0]); }
  });

  // --- Live updates ---------------------------------------------------------------------------
  function concerns(main, type, p) {
    var types = (main.getAttribute('data-live') || '').split(/\s+/);
    if (types.indexOf(type) < 0) { return false; }
    p = p || {};
    var model = main.getAttribute('data-live-model');
    var device = main.getAttribute('data-live-device');
    var group = main.getAttribute('data-live-group');
    function other(value, wanted) { return wanted && value !== undefined && value !== null && String(value) !== wanted; }
    if (type.indexOf('device_model_') === 0) { return !other(p.id, model); }
    if (type.indexOf('device_') === 0 && other(p.id, device)) { return false; }
    if (other(p.device_id, device)) { return false; }
    if (other(p.device_model_id, model)) { return false; }
    if (type.indexOf('crash_group_') === 0 && other(p.id, group)) { return false; }
    var dump = main.getAttribute('data-live-coredump');
    if (dump && type.indexOf('coredump_') === 0) {
      if (Array.isArray(p.ids)) { return p.ids.map(String).indexOf(dump) >= 0; }
      if (other(p.id, dump)) { return false; }
    }
    return true;
  }

  var refreshTimer = null;
  var refreshing = false;
  var refreshAgain = false;

  function refresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(reload, 200);
  }

  function reload() {
    if (refreshing) { refreshAgain = true; return; }
    refreshing = true;
    // Redirects are not followed: a refresh must not start a sign-in of its own in the
    // background (each would be a sign-in in progress, and replace this browser's sign-in
    // cookie for it).
    fetch(location.href, { credentials: 'same-origin', redirect: 'manual' }).then(function (response) {
      // Sent elsewhere (the session ended: to the sign-in): load the page properly.
      if (response.type === 'opaqueredirect' || response.redirected) { location.reload(); return null; }
      // What the page shows was deleted (elsewhere): say so rather than keep showing it.
      if (response.status === 404) { setLive('down', 'deleted: this page is gone'); return null; }
      var type = response.headers.get('content-type') || '';
      if (!response.ok || type.indexOf('text/html') < 0) { return null; }
      return response.text();
    }).then(function (html) {
      if (!html) { return; }
      var fresh = new DOMParser().parseFromString(html, 'text/html').querySelector('main');
      var main = document.querySelector('main');
      if (fresh && main) { swap(main, fresh); }
    }).catch(function () { /* the next event tries again */ }).then(function () {
      refreshing = false;
      if (refreshAgain) { refreshAgain = false; refresh(); }
    });
  }

  // Keeps what the person is working in: forms with unsaved edits or focus, uploads in
  // progress, open <details>, and elements marked data-preserve (the log view).
  function swap(main, fresh) {
    var active = document.activeElement;
    // The log view is kept as it is, but what it filters on comes from the fresh page: the
    // device's entity id can change.
    var freshLogs = fresh.querySelector('#logs');
    var freshEntity = freshLogs && freshLogs.getAttribute('data-logs-entity');
    main.querySelectorAll('[id]').forEach(function (el) {
      var keep = el.hasAttribute('data-preserve') || el.hasAttribute('data-dirty') ||
        el.hasAttribute('data-busy') || (el.tagName === 'FORM' && el.contains(active));
      if (!keep) { return; }
      var counterpart = fresh.querySelector('#' + CSS.escape(el.id));
      if (counterpart) { counterpart.replaceWith(el); }
    });
    // Sections the person opened or closed stay so: by id, or else by their place among all
    // sections (a fresh page draws some open, and a closed one must not open its neighbour).
    var opened = {};
    function sectionKey(d, i) { return d.id ? '#' + d.id : String(i); }
    main.querySelectorAll('details').forEach(function (d, i) { opened[sectionKey(d, i)] = d.open; });
    var activeId = active && active.id;
    main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
    main.querySelectorAll('details').forEach(function (d, i) {
      var key = sectionKey(d, i);
      if (Object.prototype.hasOwnProperty.call(opened, key)) { d.open = opened[key]; }
    });
    var logs = document.getElementById('logs');
    if (logs && freshLogs) {
      if (freshEntity === null) { logs.removeAttribute('data-logs-entity'); }
      else { logs.setAttribute('data-logs-entity', freshEntity); }
    }
    if (activeId && !main.contains(active)) {
      var again = document.getElementById(activeId);
      if (again) { again.focus(); }
    }
    startLogs();
  }

  function setLive(state, text) {
    var badge = document.getElementById('live-status');
    if (badge) { badge.setAttribute('data-state', state); badge.textContent = text; }
  }

  var subscribedLogs = null;
  var source = null;
  // The id of the last message that had one: a new stream (after the last one gave up, or the
  // tab was hidden) resumes there, so the log view also gets the lines logged meanwhile.
  var lastEventId = '';
  var retryTimer = null;
  var retryDelay = 2000;

  // A browser keeps at most six connections per host over HTTP/1.1, and a stream holds one for
  // good: only visible tabs keep theirs (a hidden tab closes it and catches up when shown again).
  // A stream the browser gave up on (the server refused it: signed out, too many streams, a proxy
  // restarting) is opened again with back-off, unless the session has ended.
  function connect() {
    var main = document.querySelector('main');
    // Pages about nothing live (sign-in, error pages) open no stream.
    if (!main || !main.getAttribute('data-live') || !window.EventSource) { return; }
    if (source || document.hidden) { return; }
    source = new EventSource('/api/sse/stream?request_id=' + streamId +
      (lastEventId ? '&last_event_id=' + encodeURIComponent(lastEventId) : ''));
    setLive('connecting', 'connecting');
    source.addEventListener('open', function () { retryDelay = 2000; setLive('live', 'live'); });
    source.addEventListener('error', function () {
      if (!source || source.readyState !== EventSource.CLOSED) {
        setLive('connecting', 'reconnecting');
        return;
      }
      disconnect();
      fetch('/api/auth/self', { credentials: 'same-origin' }).then(function (response) {
        if (response.status === 401) { setLive('down', 'signed out: reload the page'); return; }
        retryLater();
      }, retryLater);
    });
    // Where a quiet device's log feed stands, as the stream moves on: a message of its own, as a
    // browser hands scripts no message without data (their ids only reach its own reconnects).
    source.addEventListener('log-position', function (event) {
      if (event.lastEventId) { lastEventId = event.lastEventId; }
    });
    source.addEventListener('message', function (event) {
      if (event.lastEventId) { lastEventId = event.lastEventId; }
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message.type === 'version') { setLive('live', 'live'); subscribedLogs = null; startLogs(); return; }
      if (message.type === 'device-logs') { appendLogs(message.payload); return; }
      if (concerns(document.querySelector('main'), message.type, message.payload)) { refresh(); }
    });
  }

  function disconnect() {
    if (source) { source.close(); source = null; }
    subscribedLogs = null;
  }

  function retryLater() {
    setLive('connecting', 'reconnecting');
    clearTimeout(retryTimer);
    retryTimer = setTimeout(function () { connect(); refresh(); }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 60000);
  }

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) {
      clearTimeout(retryTimer);
      disconnect();
      setLive('connecting', 'paused');
    } else if (!source) {
      connect();
      refresh();
    }
  });

  // --- Device logs ----------------------------------------------------------------------------
  var MAX_LOG_LINES = 1000;

  function logLine(time, text) {
    var li = document.createElement('li');
    var t = document.createElement('time');
    // Log times are UTC, as every other time on the pages says.
    t.textContent = (time || '').replace('T', ' ').slice(0, 23) + (time ? ' UTC' : '');
    li.append(t, ' ', text);
    li.setAttribute('data-line', (time || '') + ' ' + text);
    return li;
  }

  function trimLogs(list) {
    // The newest lines only, as the page promises: a tab left open on a chatty device must
    // not grow without bound.
    while (list.children.length > MAX_LOG_LINES) { list.removeChild(list.firstElementChild); }
  }

  // Follows new lines only while the view is scrolled to its end: someone reading older lines
  // keeps their place.
  function atEnd(list) { return list.scrollHeight - list.scrollTop - list.clientHeight < 24; }

  function appendLogs(payload) {
    var box = document.getElementById('logs');
    if (!box || !payload || payload.device_entity_id !== box.getAttribute('data-logs-entity')) { return; }
    var list = box.querySelector('.log-lines');
    var follow = atEnd(list);
    (payload.logs || []).forEach(function (line) {
      list.appendChild(logLine(line['@timestamp'], line.message));
    });
    trimLogs(list);
    if (follow) { list.scrollTop = list.scrollHeight; }
  }

  // The history goes before the live lines that arrived while it was read; a line that came
  // both ways (logged between the subscription and the history's read) is shown once.
  function showHistory(box, lines) {
    var list = box.querySelector('.log-lines');
    var live = {};
    Array.prototype.forEach.call(list.children, function (li) { live[li.getAttribute('data-line')] = true; });
    var first = list.firstElementChild;
    lines.forEach(function (line) {
      var li = logLine(line.timestamp, line.message);
      if (!live[li.getAttribute('data-line')]) { list.insertBefore(li, first); }
    });
    if (list.children.length === 0) { setStatus(box, 'No log lines yet.', false); }
    trimLogs(list);
    list.scrollTop = list.scrollHeight;
  }

  function startLogs() {
    var box = document.getElementById('logs');
    if (!box) { return; }
    var device = box.getAttribute('data-logs-device');
    var subscribed = Promise.resolve();
    if (subscribedLogs !== device) {
      subscribedLogs = device;
      subscribed = api('POST', '/api/device-logs/subscribe', { request_id: streamId, device_id: Number(device) })
        .catch(function (error) { setStatus(box, error.message, true); });
    }
    if (!box.hasAttribute('data-loaded')) {
      box.setAttribute('data-loaded', '');
      // Subscribed first, then the history: a line logged in between comes live, in the
      // history, or both, but is not lost. The newest lines (backwards from a day ahead, as the
      // Python UI asks), oldest first.
      subscribed.then(function () {
        var end = new Date(Date.now() + 24 * 3600 * 1000).toISOString();
        return api('GET', '/api/devices/' + device + '/logs?end=' + encodeURIComponent(end));
      }).then(function (page) {
        showHistory(box, (page && page.logs) || []);
      }, function (error) { setStatus(box, error.message, true); });
    }
  }

  connect();
})();
