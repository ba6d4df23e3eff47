/* The recovery team's live map. Plain JS, no build step; Leaflet and
 * Leaflet.markercluster come from their xstatic packages (tracker/page.py).
 *
 * Two modes:
 *  - live (at /): sign in with an API key (kept in sessionStorage), list the
 *    vehicles the key may see, follow them over WS /api/v1/live?token=KEY.
 *  - share (at /share/TOKEN): one vehicle from GET /share/TOKEN/data and
 *    WS /api/v1/live?share=TOKEN; HTTP 410 or close code 4410: link is gone.
 *
 * window.tracker exposes the state, the map and the markers (tests read it).
 */
(function () {
  'use strict';

  const SEC = 1000, MIN = 60 * SEC, HOUR = 60 * MIN, DAY = 24 * HOUR;
  // status colours, as the recovery team reads them
  const MOVING_KMH = 3;          // faster than this, on a fresh fix: moving
  const FRESH_MS = 5 * MIN;      // a fix younger than this tells moving from parked
  const SILENT_MS = 30 * MIN;    // nothing heard for longer: silent
  const OFFLINE_MS = DAY;        // nothing heard for longer (or never): offline
  const SILENT_ALERTS = new Set(['unit_silent', 'wired_silent_battery_alive']);
  const TRAIL_MS = HOUR;         // the live trail behind the selected vehicle
  const FOLLOW_MIN_ZOOM = 12;    // following a car zooms in at least this far
  const STOP_RADIUS_M = 60;      // replay: within this distance...
  const STOP_MIN_MS = 2 * MIN;   // ...for at least this long is a stop
  const KEY_STORE = 'tracker-key';
  const THEME_STORE = 'tracker-theme';
  const STATUS_ORDER = ['moving', 'parked', 'silent', 'offline'];

  const EVENT_LABELS = {
    sos: 'SOS', power_cut: 'Power cut', removed: 'Unit removed', low_battery: 'Low battery',
    jamming: 'Jamming', unit_silent: 'Unit silent', unit_back: 'Unit back',
    wired_silent_battery_alive: 'Wired unit silent, battery alive',
    geofence_enter: 'Entered area', geofence_exit: 'Left area',
    outside_allowed_area: 'Outside allowed area', risk_site_visit: 'Risk site visit',
    units_separated: 'Units separated', towed: 'Towed', long_stay: 'Long stay',
    night_location_changed: 'Night location changed', gathering: 'Gathering',
  };

  const $ = (id) => document.getElementById(id);
  const shareMatch = location.pathname.match(/^\/share\/([^/]+)\/?$/);

  const state = {
    mode: shareMatch ? 'share' : 'live',
    key: null,
    share: shareMatch ? decodeURIComponent(shareMatch[1]) : null,
    vehicles: new Map(),   // vehicle_id -> {id, info, pos, seen, lastEvent, row, status}
    alerts: new Map(),     // vehicle_id + '|' + alert_key -> event
    silent: new Set(),     // vehicle_ids with an open silence alert
    selected: null,
    follow: false,
    trail: [],             // [{t, lat, lon}] of the selected vehicle
    ws: null,
    connected: false,      // a snapshot arrived on the current socket
    retryMs: 1000,
    clockOffset: 0,        // server clock minus ours, from the Date header
    newMarkers: null,      // while loading: markers to add to the map in one go
    ticks: 0,
    query: '',
    expiresAt: null,
    gone: null,
    replay: null,
  };
  const tracker = window.tracker = {state, markers: {}, map: null, tiles: null, trail: null};

  // ---- small helpers

  function now() { return Date.now() + state.clockOffset; }

  function esc(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({
      '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
  }

  function ago(ms) {
    if (ms == null || !isFinite(ms)) return 'never';
    const s = Math.max(0, Math.round(ms / SEC));
    if (s < 10) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 48 * 3600) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' days ago';
  }

  function duration(ms) {
    const s = Math.max(0, Math.round(ms / SEC));
    if (s < 60) return s + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + ' min';
    const h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min';
    return Math.floor(h / 24) + ' days ' + (h % 24) + ' h';
  }

  function timeLeft(ms) {  // the last minutes of a share link count in seconds
    const s = Math.max(0, Math.ceil(ms / SEC));
    if (s >= 600) return duration(ms);
    return s < 60 ? s + ' s' : Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', second: '2-digit'});
  }

  function compass(deg) {
    return ['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'][Math.round(((deg % 360) + 360) % 360 / 45) % 8];
  }

  function metres(a, b) {
    const rad = Math.PI / 180;
    const dLat = (b.lat - a.lat) * rad, dLon = (b.lon - a.lon) * rad;
    const h = Math.sin(dLat / 2) ** 2 +
      Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLon / 2) ** 2;
    return 2 * 6371008.8 * Math.asin(Math.min(1, Math.sqrt(h)));
  }

  function localInput(ms) {  // for <input type="datetime-local">
    const d = new Date(ms), p = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' +
      p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }

  function eventLabel(type) {
    if (EVENT_LABELS[type]) return EVENT_LABELS[type];
    if (type.endsWith('_cleared')) return eventLabel(type.slice(0, -8)) + ' cleared';
    const words = type.replace(/_/g, ' ');
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  function plateOf(v) { return (v.info && v.info.plate) || v.id; }

  function setText(node, text) {  // the list is refreshed often: touch the DOM only on change
    if (node.textContent !== text) node.textContent = text;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  // ---- theme: dark at night (or when the phone is dark), a toggle that sticks

  function initialTheme() {
    const saved = localStorage.getItem(THEME_STORE);
    if (saved === 'dark' || saved === 'light') return saved;
    const hour = new Date().getHours();
    if (hour >= 19 || hour < 7) return 'dark';
    return window.matchMedia && matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
  }

  function setTheme(theme) {
    document.documentElement.dataset.theme = theme;
    const button = $('theme');
    button.textContent = theme === 'dark' ? '\u263C' : '\u263E';
    button.setAttribute('aria-label', theme === 'dark' ? 'Switch to light mode' : 'Switch to dark mode');
    document.querySelector('meta[name="theme-color"]')
      .setAttribute('content', theme === 'dark' ? '#0b0f14' : '#ffffff');
  }

  // ---- HTTP

  class ApiError extends Error {
    constructor(status, detail) { super(detail || ('HTTP ' + status)); this.status = status; }
  }

  function noteClock(res) {
    const date = Date.parse(res.headers.get('date') || '');
    if (!isNaN(date)) {
      const offset = date - Date.now();  // whole seconds: only trust a real skew
      state.clockOffset = Math.abs(offset) > 5 * SEC ? offset : 0;
    }
  }

  async function detailOf(res) {
    try { return (await res.json()).detail || ''; } catch (e) { return ''; }
  }

  async function api(path) {
    const res = await fetch(path, {headers: {Authorization: 'Bearer ' + state.key}});
    noteClock(res);
    if (!res.ok) throw new ApiError(res.status, await detailOf(res));
    return res.json();
  }

  // ---- screens

  function showSignIn(message) {
    $('app').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    $('key').focus();
  }

  function showGone(reason) {
    state.gone = reason || 'gone';
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
    const text = String(reason || '').toLowerCase();
    let title = 'This link is no longer valid';
    if (text.includes('revoked')) title = 'This link was revoked';
    else if (text.includes('expired')) title = 'This link has expired';
    else if (text.includes('not found') || text === 'unknown') title = 'This link is not valid';
    $('gone-title').textContent = title;
    $('gone-text').textContent =
      'The shared location is no longer visible. Ask the person who sent it for a new link.';
    $('app').hidden = true;
    $('signin').hidden = true;
    $('gone').hidden = false;
  }

  function showApp() {
    $('signin').hidden = true;
    $('gone').hidden = true;
    $('app').hidden = false;
    if (state.mode === 'share') {
      document.body.classList.add('share');
      $('tabs').hidden = true;
      $('tab-vehicles').hidden = true;
      $('signout').hidden = true;
      $('card-close').hidden = true;
      $('card-replay').hidden = true;
      $('expires').hidden = false;
      $('title').textContent = 'Shared location';
    }
    initMap();
  }

  function setConn(kind, title) {
    $('conn').className = 'conn conn-' + kind;
    $('conn').title = title;
  }

  // ---- the map

  function initMap() {
    if (tracker.map) return;
    const map = tracker.map = L.map('map', {zoomControl: true, worldCopyJump: true})
      .setView([20, 0], 2);
    const tileUrl = document.querySelector('meta[name="tile-url"]').content;
    const tiles = tracker.tiles = L.tileLayer(tileUrl, {
      maxZoom: 19,
      attribution: /openstreetmap/i.test(tileUrl) ?
        '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors' : '',
    });
    let loaded = 0;
    tiles.on('tileload', () => { loaded += 1; $('tiles-note').hidden = true; });
    tiles.on('tileerror', () => { if (!loaded) $('tiles-note').hidden = false; });
    tiles.addTo(map);
    tracker.cluster = L.markerClusterGroup ? L.markerClusterGroup({
      disableClusteringAtZoom: 15,
      maxClusterRadius: 50,
      showCoverageOnHover: false,
      chunkedLoading: true,
      iconCreateFunction: (cluster) => L.divIcon({
        className: '', iconSize: [44, 44],
        html: '<div class="cluster" style="width:44px;height:44px">' + cluster.getChildCount() + '</div>',
      }),
    }) : L.layerGroup();
    tracker.cluster.addTo(map);
    tracker.trail = L.polyline([], {color: '#4ea1ff', weight: 5, opacity: 0.85}).addTo(map);
    tracker.accuracy = L.circle([0, 0], {radius: 1, weight: 1, color: '#4ea1ff', fillOpacity: 0.12});
    map.on('dragstart', () => setFollow(false));  // the user took the map: stop following
    // the panel below grows and shrinks (a card, a tab): keep Leaflet's idea of the size true
    if (window.ResizeObserver) {
      new ResizeObserver(() => {
        map.invalidateSize({pan: false});
        const v = state.vehicles.get(state.selected);
        if (state.follow && v && v.pos) centreOn(v, 0, false);
      }).observe($('map'));
    }
  }

  function markerIcon(v, status) {
    const course = v.pos.course;
    const arrow = course == null ? '' :
      '<path d="M20 7 L27.5 27 L20 22.5 L12.5 27 Z" transform="rotate(' + Math.round(course) + ' 20 20)"/>';
    const selected = v.id === state.selected ? ' vm-selected' : '';
    return L.divIcon({
      className: '',
      iconSize: [40, 40],
      iconAnchor: [20, 20],
      html: '<div class="vm vm-' + status + selected + '"><svg viewBox="0 0 40 40">' +
        '<circle cx="20" cy="20" r="15"/>' + arrow + '</svg>' +
        '<span class="vm-label">' + esc(plateOf(v)) + '</span></div>',
    });
  }

  function updateMarker(v) {
    if (!v.pos) return;
    const latlng = [v.pos.lat, v.pos.lon];
    const iconKey = v.status + '|' + Math.round(v.pos.course ?? -1) + '|' +
      (v.id === state.selected) + '|' + plateOf(v);
    let marker = tracker.markers[v.id];
    if (!marker) {
      marker = tracker.markers[v.id] = L.marker(latlng, {
        icon: markerIcon(v, v.status), title: plateOf(v), keyboard: true,
        zIndexOffset: v.id === state.selected ? 1000 : 0,
      });
      marker.iconKey = iconKey;
      marker.on('click', () => select(v.id));
      if (state.newMarkers) state.newMarkers.push(marker);  // added at once, see startLive
      else tracker.cluster.addLayer(marker);
      return;
    }
    marker.setLatLng(latlng);
    if (marker.iconKey !== iconKey) {
      marker.iconKey = iconKey;
      marker.setIcon(markerIcon(v, v.status));
      marker.setZIndexOffset(v.id === state.selected ? 1000 : 0);
    }
  }

  /** Leaflet drops a new view asked for while it animates a zoom: wait for the end. */
  function whenSettled(fn) {
    const map = tracker.map;
    if (map._animatingZoom) map.once('zoomend', () => whenSettled(fn));
    else fn();
  }

  /** The vehicle in the middle of the map, zoomed in to at least minZoom. */
  function centreOn(v, minZoom, animate) {
    whenSettled(() => {
      if (!v.pos) return;
      const map = tracker.map, at = [v.pos.lat, v.pos.lon];
      if (map.getZoom() < minZoom) map.setView(at, minZoom, {animate});
      else map.panTo(at, {animate});
    });
  }

  function fitAll() {
    const points = [...state.vehicles.values()].filter((v) => v.pos).map((v) => [v.pos.lat, v.pos.lon]);
    if (points.length === 1) tracker.map.setView(points[0], 15);
    else if (points.length > 1) tracker.map.fitBounds(points, {padding: [40, 40], maxZoom: 15});
  }

  // ---- vehicles, positions and status

  function vehicleEntry(id, info) {
    let v = state.vehicles.get(id);
    if (!v) {
      v = {id, info: info || {vehicle_id: id}, pos: null, seen: null, lastEvent: null,
           row: null, status: 'offline'};
      state.vehicles.set(id, v);
      if (state.mode === 'live') {
        addRow(v);
        renderCount();
      }
    } else if (info) {
      v.info = info;
    }
    return v;
  }

  function statusOf(v, at) {
    if (!v.pos) return 'offline';
    const seenAge = at - Math.max(v.seen || 0, v.pos.fix);
    if (seenAge > OFFLINE_MS) return 'offline';
    if (state.silent.has(v.id) || seenAge > SILENT_MS) return 'silent';
    const fixAge = at - v.pos.fix;
    if (fixAge < FRESH_MS && (v.pos.speed || 0) > MOVING_KMH) return 'moving';
    return 'parked';
  }

  function refresh(v) {
    v.status = statusOf(v, now());
    updateRow(v);
    updateMarker(v);
    if (v.id === state.selected) updateCard();
  }

  /** A position from the locations endpoint, a snapshot, a share or the live socket. */
  function applyPosition(p, fallbackId) {
    const id = p.vehicle_id || fallbackId;
    if (!id || p.lat == null || p.lon == null) return;
    const v = vehicleEntry(id);
    const fix = Date.parse(p.fix_time);
    let seen = Math.max(Date.parse(p.server_time) || 0, fix || 0);
    for (const unit of p.units || []) seen = Math.max(seen, Date.parse(unit.last_seen) || 0);
    v.seen = Math.max(v.seen || 0, seen);
    if (id === state.selected) addTrailPoint({t: fix, lat: p.lat, lon: p.lon});
    if (p.latest === false || (v.pos && fix < v.pos.fix)) {  // an old buffered fix: trail only
      refresh(v);
      return;
    }
    v.pos = {
      lat: p.lat, lon: p.lon, fix, speed: p.speed_kmh, course: p.course,
      accuracy: p.accuracy_m, satellites: p.satellites, valid: p.valid,
    };
    refresh(v);
    if (id === state.selected) {
      showAccuracy(v);
      if (state.follow) centreOn(v, FOLLOW_MIN_ZOOM, true);
    }
  }

  function applyEvent(message) {
    const event = Object.assign({}, message, {type: message.event_type || message.type});
    const v = state.vehicles.get(event.vehicle_id);
    if (state.mode === 'live' && !v) return;
    if (event.alert_key) {
      const key = event.vehicle_id + '|' + event.alert_key;
      if (event.clears) state.alerts.delete(key);
      else state.alerts.set(key, event);
      renderAlerts();
    }
    if (v) {
      if (!v.lastEvent || Date.parse(event.detected_at) >= Date.parse(v.lastEvent.detected_at)) {
        v.lastEvent = event;
      }
      refresh(v);
    }
  }

  // ---- the list

  function addRow(v) {
    const li = el('li');
    li.dataset.id = v.id;
    const button = el('button', 'item');
    button.type = 'button';
    const dot = el('span', 'dot');
    const main = el('span', 'item-main');
    const plate = el('span', 'plate');
    const sub = el('span', 'muted');
    main.append(plate, sub);
    const meta = el('span', 'item-meta');
    const word = el('span', 'status-word');
    const seen = el('span', 'muted seen');
    meta.append(word, seen);
    button.append(dot, main, meta);
    button.addEventListener('click', () => select(v.id));
    li.append(button);
    v.row = {li, dot, plate, sub, word, seen};
    $('vehicles').append(li);
    updateRow(v);
  }

  function updateRow(v) {
    if (!v.row) return;
    const info = v.info || {};
    if (v.row.li.dataset.status !== v.status) {
      v.row.li.dataset.status = v.status;
      v.row.dot.className = 'dot ' + v.status;
    }
    v.row.li.classList.toggle('selected', v.id === state.selected);
    setText(v.row.plate, plateOf(v));
    setText(v.row.sub, [info.plate ? v.id : null, info.loan_ref, info.vin]
      .filter(Boolean).join(' \u00B7 '));
    setText(v.row.word, v.status);
    const seen = v.pos ? Math.max(v.seen || 0, v.pos.fix) : null;
    setText(v.row.seen, seen ? 'last seen ' + ago(now() - seen) : 'never reported');
    const hidden = !matches(v, state.query);
    if (v.row.li.hidden !== hidden) v.row.li.hidden = hidden;
  }

  function normal(text) { return String(text || '').toLowerCase().replace(/[\s\-_.\/]/g, ''); }

  function matches(v, query) {
    if (!query) return true;
    const info = v.info || {};
    return [v.id, info.plate, info.vin, info.loan_ref].some((f) => normal(f).includes(query));
  }

  function applySearch() {
    state.query = normal($('search').value);
    let shown = 0;
    for (const v of state.vehicles.values()) {
      if (!v.row) continue;
      v.row.li.hidden = !matches(v, state.query);
      if (!v.row.li.hidden) shown += 1;
    }
    $('no-match').hidden = shown > 0 || state.vehicles.size === 0;
    renderAlerts();
  }

  function renderCount() {
    $('vehicle-count').textContent = state.vehicles.size ? '(' + state.vehicles.size + ')' : '';
  }

  // ---- the selected vehicle: card, trail, follow, navigate

  function select(id) {
    const v = state.vehicles.get(id);
    if (!v) return;
    const previous = state.selected;
    if (state.replay && state.replay.vehicle !== id) stopReplay();
    state.selected = id;
    if (previous && previous !== id) refresh(state.vehicles.get(previous));
    state.trail = [];
    tracker.trail.setLatLngs([]);
    refresh(v);
    $('card').hidden = false;
    $('panel').scrollTop = 0;
    tracker.map.invalidateSize({pan: false});
    if (v.pos) {
      centreOn(v, 16, false);
      showAccuracy(v);
    }
    setFollow(true);
    renderReplayForm();
    if (state.mode === 'live') {
      loadTrail(v).catch((e) => console.warn('trail', e));
      loadLastEvent(v).catch((e) => console.warn('last event', e));
    }
  }

  function unselect() {
    const id = state.selected;
    stopReplay();
    state.selected = null;
    setFollow(false);
    state.trail = [];
    tracker.trail.setLatLngs([]);
    tracker.accuracy.remove();
    $('card').hidden = true;
    if (id) refresh(state.vehicles.get(id));
    renderReplayForm();
  }

  function setFollow(on) {
    state.follow = on && !!state.selected;
    $('follow').setAttribute('aria-pressed', String(state.follow));
    $('follow').textContent = state.follow ? 'Following' : 'Follow';
    const v = state.vehicles.get(state.selected);
    if (state.follow && v && v.pos) centreOn(v, FOLLOW_MIN_ZOOM, true);
  }

  function showAccuracy(v) {
    if (v.pos && v.pos.accuracy) {
      tracker.accuracy.setLatLng([v.pos.lat, v.pos.lon]).setRadius(v.pos.accuracy);
      tracker.accuracy.addTo(tracker.map);
    } else {
      tracker.accuracy.remove();
    }
  }

  function updateCard() {
    const v = state.vehicles.get(state.selected);
    if (!v) return;
    const info = v.info || {};
    $('card-dot').className = 'dot ' + v.status;
    $('card-plate').textContent = plateOf(v);
    $('card-sub').textContent = [info.plate ? v.id : null, info.loan_ref, info.vin]
      .filter(Boolean).join(' \u00B7 ');
    $('card-status').textContent = v.status;
    const t = now();
    if (!v.pos) {
      $('card-seen').textContent = 'never reported';
      $('card-fix').textContent = 'no fix yet';
      $('card-speed').textContent = '\u2013';
      setNavigate(null);
    } else {
      $('card-seen').textContent = ago(t - Math.max(v.seen || 0, v.pos.fix));
      const accuracy = v.pos.accuracy ? '\u00B1' + Math.round(v.pos.accuracy) + ' m' :
        v.pos.satellites ? v.pos.satellites + ' satellites' : 'accuracy unknown';
      $('card-fix').textContent = ago(t - v.pos.fix).replace(' ago', ' old') + ' \u00B7 ' + accuracy;
      const heading = v.pos.course == null ? '' :
        ' \u00B7 ' + Math.round(v.pos.course) + '\u00B0 ' + compass(v.pos.course);
      $('card-speed').textContent = Math.round(v.pos.speed || 0) + ' km/h' + heading;
      setNavigate(v);
    }
    const e = v.lastEvent;
    $('card-event').textContent = e ?
      eventLabel(e.type) + ' \u00B7 ' + ago(t - Date.parse(e.detected_at)) : 'none';
  }

  function setNavigate(v) {
    const nav = $('navigate'), web = $('webmap');
    if (!v || !v.pos) {
      nav.removeAttribute('href');
      web.removeAttribute('href');
      return;
    }
    const where = v.pos.lat.toFixed(6) + ',' + v.pos.lon.toFixed(6);
    // geo: opens the phone's map app (Android); the web link opens maps in any browser or app
    nav.href = 'geo:' + where + '?q=' + where + '(' + encodeURIComponent(plateOf(v)) + ')';
    web.href = 'https://www.google.com/maps/dir/?api=1&destination=' + where;
  }

  function addTrailPoint(point) {
    if (!isFinite(point.t)) return;
    const trail = state.trail;
    let i = trail.length;
    while (i > 0 && trail[i - 1].t > point.t) i -= 1;
    if (i > 0 && trail[i - 1].t === point.t) return;
    trail.splice(i, 0, point);
    if (state.mode === 'live') {  // a share shows all its history
      const newest = trail[trail.length - 1].t;
      while (trail.length && trail[0].t < newest - TRAIL_MS) trail.shift();
    }
    tracker.trail.setLatLngs(trail.map((p) => [p.lat, p.lon]));
  }

  async function loadTrail(v) {
    const end = now(), start = end - TRAIL_MS;
    const items = await fetchTrack(v.id, start, end + MIN, 5);
    if (state.selected !== v.id) return;
    for (const p of items) addTrailPoint({t: Date.parse(p.fix_time), lat: p.lat, lon: p.lon});
  }

  async function loadLastEvent(v) {
    const body = await api('/api/v1/events?limit=1&vehicle_id=' + encodeURIComponent(v.id));
    const [event] = body.items || [];
    if (event && (!v.lastEvent || Date.parse(event.detected_at) > Date.parse(v.lastEvent.detected_at))) {
      v.lastEvent = event;
      if (state.selected === v.id) updateCard();
    }
  }

  async function fetchTrack(id, startMs, endMs, maxPages) {
    const items = [];
    let cursor = null, pages = 0;
    do {
      const query = new URLSearchParams({
        from: new Date(startMs).toISOString(), to: new Date(endMs).toISOString(), limit: '5000'});
      if (cursor) query.set('cursor', cursor);
      const page = await api('/api/v1/vehicles/' + encodeURIComponent(id) + '/track?' + query);
      items.push(...page.items);
      cursor = page.next_cursor;
      pages += 1;
    } while (cursor && pages < maxPages);
    return items;
  }

  // ---- alerts: open ones for the vehicles shown, newest first

  function renderAlerts() {
    state.silent = new Set([...state.alerts.values()]
      .filter((a) => SILENT_ALERTS.has(a.type)).map((a) => a.vehicle_id));
    const list = $('alerts');
    list.textContent = '';
    const shown = [...state.alerts.values()].filter((a) => {
      const v = state.vehicles.get(a.vehicle_id);
      return v && matches(v, state.query);
    }).sort((a, b) => Date.parse(b.detected_at) - Date.parse(a.detected_at));
    const t = now();
    for (const alert of shown) {
      const v = state.vehicles.get(alert.vehicle_id);
      const li = el('li');
      li.dataset.vehicle = alert.vehicle_id;
      li.dataset.type = alert.type;
      const button = el('button', 'item');
      button.type = 'button';
      const main = el('span', 'item-main');
      main.append(el('span', 'alert-type', eventLabel(alert.type)), el('span', 'muted', plateOf(v)));
      const meta = el('span', 'item-meta');
      meta.append(el('span', 'muted', ago(t - Date.parse(alert.detected_at))),
                  el('span', 'muted', alert.severity || ''));
      button.append(el('span', 'sev sev-' + (alert.severity || 'info')), main, meta);
      button.addEventListener('click', () => select(alert.vehicle_id));
      li.append(button);
      list.append(li);
    }
    $('no-alerts').hidden = shown.length > 0;
    const badge = $('alert-count');
    badge.textContent = String(shown.length);
    badge.hidden = shown.length === 0;
    for (const v of state.vehicles.values()) {
      const status = statusOf(v, t);
      if (status !== v.status) refresh(v);
    }
  }

  async function loadAlerts() {
    const body = await api('/api/v1/alerts');
    state.alerts.clear();
    for (const item of body.items || []) {
      if (item.alert_key) state.alerts.set(item.vehicle_id + '|' + item.alert_key, item);
      const v = state.vehicles.get(item.vehicle_id);
      if (v && (!v.lastEvent || Date.parse(item.detected_at) > Date.parse(v.lastEvent.detected_at))) {
        v.lastEvent = item;
      }
    }
    renderAlerts();
  }

  // ---- tabs

  function showTab(name) {
    for (const button of document.querySelectorAll('#tabs button')) {
      button.setAttribute('aria-selected', String(button.dataset.tab === name));
    }
    for (const tab of ['vehicles', 'alerts', 'replay']) $('tab-' + tab).hidden = tab !== name;
  }

  // ---- replay: a time range, a slider, stops marked

  function renderReplayForm() {
    const v = state.vehicles.get(state.selected);
    $('replay-none').hidden = !!v;
    $('replay-form').hidden = !v || !!state.replay;
    if (v) {
      $('replay-title').textContent = 'Replay ' + plateOf(v);
      if (!$('replay-from').value) setReplayRange(24);
    }
  }

  function setReplayRange(hours) {
    const end = now();
    $('replay-from').value = localInput(end - hours * HOUR);
    $('replay-to').value = localInput(end + MIN);
  }

  /** Stay points: fixes within STOP_RADIUS_M of the first for STOP_MIN_MS or longer. */
  function findStops(points) {
    const stops = [];
    let i = 0;
    while (i < points.length) {
      let j = i + 1;
      while (j < points.length && metres(points[i], points[j]) <= STOP_RADIUS_M) j += 1;
      const last = points[j - 1];
      if (last.t - points[i].t >= STOP_MIN_MS) {
        const group = points.slice(i, j);
        stops.push({
          lat: group.reduce((s, p) => s + p.lat, 0) / group.length,
          lon: group.reduce((s, p) => s + p.lon, 0) / group.length,
          start: points[i].t, end: last.t,
        });
        i = j;
      } else {
        i += 1;
      }
    }
    return stops;
  }

  function positionAt(points, t) {
    let lo = 0, hi = points.length - 1;
    if (t <= points[0].t) return points[0];
    if (t >= points[hi].t) return points[hi];
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (points[mid].t <= t) lo = mid; else hi = mid;
    }
    const a = points[lo], b = points[hi], f = (t - a.t) / Math.max(1, b.t - a.t);
    return {t, lat: a.lat + (b.lat - a.lat) * f, lon: a.lon + (b.lon - a.lon) * f,
            speed: a.speed, course: a.course};
  }

  async function loadReplay(event) {
    event.preventDefault();
    const v = state.vehicles.get(state.selected);
    if (!v) return;
    const start = new Date($('replay-from').value).getTime();
    const end = new Date($('replay-to').value).getTime();
    $('replay-error').textContent = '';
    if (!(start < end)) {
      $('replay-error').textContent = '"From" must be before "To".';
      return;
    }
    let items;
    try {
      items = await fetchTrack(v.id, start, end, 20);
    } catch (e) {
      $('replay-error').textContent = 'Could not load the track: ' + e.message;
      return;
    }
    const points = items.map((p) => ({t: Date.parse(p.fix_time), lat: p.lat, lon: p.lon,
                                      speed: p.speed_kmh, course: p.course}))
      .filter((p) => isFinite(p.t)).sort((a, b) => a.t - b.t);
    stopReplay();
    if (!points.length) {
      $('replay-error').textContent = 'No positions between these times.';
      return;
    }
    setFollow(false);
    const stops = findStops(points);
    const layer = L.layerGroup().addTo(tracker.map);
    const line = L.polyline(points.map((p) => [p.lat, p.lon]),
                            {color: '#c678dd', weight: 5, opacity: 0.9}).addTo(layer);
    stops.forEach((stop, n) => {
      L.marker([stop.lat, stop.lon], {
        icon: L.divIcon({className: '', iconSize: [26, 26], iconAnchor: [13, 13],
                         html: '<div class="stop-marker">' + (n + 1) + '</div>'}),
        title: 'Stop ' + (n + 1),
      }).bindTooltip('Stopped ' + duration(stop.end - stop.start) + ', ' +
                     clock(stop.start) + '\u2013' + clock(stop.end)).addTo(layer);
    });
    const marker = L.marker([points[0].lat, points[0].lon], {zIndexOffset: 2000, icon: L.divIcon({
      className: '', iconSize: [40, 40], iconAnchor: [20, 20],
      html: '<div class="vm vm-replay"><svg viewBox="0 0 40 40"><circle cx="20" cy="20" r="13"/></svg></div>',
    })}).addTo(layer);
    tracker.replay = state.replay = {vehicle: v.id, points, stops, layer, line, marker,
                                     t: points[0].t, timer: null};
    whenSettled(() => tracker.map.fitBounds(line.getBounds(), {padding: [30, 30], maxZoom: 17}));
    const span = points[points.length - 1].t - points[0].t;
    $('replay-summary').textContent = points.length + ' positions over ' + duration(span) + ', ' +
      stops.length + (stops.length === 1 ? ' stop' : ' stops');
    const list = $('replay-stops');
    list.textContent = '';
    stops.forEach((stop, n) => {
      const li = el('li', null, (n + 1) + '. ' + clock(stop.start) + '\u2013' + clock(stop.end) +
                    ' \u00B7 ' + duration(stop.end - stop.start));
      li.addEventListener('click', () => setReplayTime(stop.start));
      list.append(li);
    });
    $('replay-form').hidden = true;  // the player takes its place on a small screen
    $('replay-player').hidden = false;
    $('tabs').scrollIntoView({block: 'start'});
    setReplayTime(points[0].t);
  }

  function setReplayTime(t) {
    const replay = state.replay;
    if (!replay) return;
    const points = replay.points, first = points[0].t, last = points[points.length - 1].t;
    replay.t = Math.min(last, Math.max(first, t));
    const at = positionAt(points, replay.t);
    replay.marker.setLatLng([at.lat, at.lon]);
    $('replay-slider').value = String(last > first ? Math.round((replay.t - first) / (last - first) * 1000) : 1000);
    $('replay-time').textContent = clock(replay.t) + ' \u00B7 ' + Math.round(at.speed || 0) + ' km/h';
  }

  function playReplay() {
    const replay = state.replay;
    if (!replay) return;
    if (replay.timer) {
      pauseReplay();
      return;
    }
    const last = replay.points[replay.points.length - 1].t;
    if (replay.t >= last) setReplayTime(replay.points[0].t);
    $('replay-play').textContent = 'Pause';
    let before = performance.now();
    replay.timer = setInterval(() => {
      const at = performance.now();
      setReplayTime(replay.t + (at - before) * Number($('replay-speed').value));
      before = at;
      if (!tracker.map.getBounds().contains(replay.marker.getLatLng())) {
        tracker.map.panTo(replay.marker.getLatLng());
      }
      if (replay.t >= last) pauseReplay();
    }, 100);
  }

  function pauseReplay() {
    const replay = state.replay;
    if (replay && replay.timer) clearInterval(replay.timer);
    if (replay) replay.timer = null;
    $('replay-play').textContent = 'Play';
  }

  function stopReplay() {
    pauseReplay();
    if (state.replay) state.replay.layer.remove();
    tracker.replay = state.replay = null;
    $('replay-player').hidden = true;
    renderReplayForm();
  }

  // ---- the live socket

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = state.mode === 'share' ?
      'share=' + encodeURIComponent(state.share) : 'token=' + encodeURIComponent(state.key);
    const ws = new WebSocket(proto + '//' + location.host + '/api/v1/live?' + query);
    state.ws = ws;
    state.connected = false;
    setConn('connecting', 'connecting');
    ws.onopen = () => {
      const wanted = state.mode === 'share' ? [...state.vehicles.keys()] : '*';
      ws.send(JSON.stringify({subscribe: wanted}));
    };
    ws.onmessage = (e) => {
      if (ws !== state.ws) return;
      let message;
      try { message = JSON.parse(e.data); } catch (err) { return; }
      const only = state.mode === 'share' ? [...state.vehicles.keys()][0] : undefined;
      if (message.type === 'snapshot') {
        (message.positions || []).forEach((p) => applyPosition(p, only));
        state.connected = true;
        state.retryMs = 1000;
        setConn('live', 'live');
      } else if (message.type === 'position') {
        applyPosition(message, only);
      } else if (message.type === 'event') {
        if (only && !message.vehicle_id) message.vehicle_id = only;
        applyEvent(message);
      } else if (message.type === 'error') {
        console.warn('live:', message.detail);
      }
    };
    ws.onclose = (e) => {
      if (ws !== state.ws) return;  // replaced or signed out
      state.ws = null;
      state.connected = false;
      setConn('off', 'disconnected, retrying');
      if (e.code === 4410) {  // the share ended; the data URL says why (revoked, expired)
        if (e.reason) showGone(e.reason);
        else loadShare().then((ok) => { if (ok) showGone('gone'); }, () => showGone('gone'));
        return;
      }
      if (e.code === 4401 && state.mode === 'live') {
        signOut('This API key is no longer valid.');
        return;
      }
      const wait = state.retryMs;
      state.retryMs = Math.min(15 * SEC, state.retryMs * 2);
      setTimeout(reconnect, wait);
    };
  }

  async function reconnect() {
    if (state.gone || state.ws) return;
    try {
      if (state.mode === 'share') {
        if (!(await loadShare())) return;
      } else {
        await loadAlerts();  // events missed while away
      }
    } catch (e) {
      console.warn('reconnect', e);
    }
    if (!state.gone && !state.ws) connect();
  }

  // ---- live mode

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close();
    if (message) {
      location.replace('/?signed_out=' + encodeURIComponent(message));
    } else {
      location.replace('/');
    }
  }

  async function startLive(key) {
    state.key = key;
    let vehicles;
    try {
      vehicles = [];
      let after = null, pages = 0;
      do {
        const query = new URLSearchParams({limit: '1000'});
        if (after) query.set('after', after);
        const page = await api('/api/v1/vehicles?' + query);
        vehicles.push(...page.items);
        after = page.next_after;
        pages += 1;
      } while (after && pages < 200);
    } catch (e) {
      sessionStorage.removeItem(KEY_STORE);
      showSignIn(e.status === 401 ? 'This API key is not valid.' : 'Could not sign in: ' + e.message);
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    showApp();
    for (const info of vehicles) vehicleEntry(info.vehicle_id, info);
    $('loading').hidden = true;
    renderCount();
    applySearch();
    try {
      const body = await api('/api/v1/locations');
      state.newMarkers = [];  // thousands of markers: one addLayers, chunked, not one by one
      for (const p of body.items || []) applyPosition(p);
    } catch (e) {
      console.warn('locations', e);
    } finally {
      const markers = state.newMarkers || [];
      state.newMarkers = null;
      if (tracker.cluster.addLayers) tracker.cluster.addLayers(markers);
      else markers.forEach((m) => tracker.cluster.addLayer(m));
    }
    try {
      await loadAlerts();
    } catch (e) {
      console.warn('alerts', e);
    }
    fitAll();
    connect();
  }

  // ---- share mode

  /** Load (or reload) the share; false when the link is gone. */
  async function loadShare() {
    const res = await fetch('/share/' + encodeURIComponent(state.share) + '/data');
    noteClock(res);
    if (res.status === 410) {
      showGone((await detailOf(res)) || 'expired');
      return false;
    }
    if (res.status === 404) {
      showGone('not found');
      return false;
    }
    if (!res.ok) throw new ApiError(res.status, await detailOf(res));
    const data = await res.json();
    const info = data.vehicle || {};
    const id = info.vehicle_id || 'shared';
    const v = vehicleEntry(id, info);
    const first = state.expiresAt == null;
    // seconds_left needs no agreement between the two clocks; expires_at is the fallback
    state.expiresAt = typeof data.seconds_left === 'number' ?
      Date.now() + state.clockOffset + data.seconds_left * SEC : Date.parse(data.expires_at);
    $('title').textContent = plateOf(v);
    document.title = plateOf(v) + ': shared location';
    if (state.selected !== id) select(id);
    for (const p of data.history || []) applyPosition(p, id);
    if (data.position) applyPosition(data.position, id);
    if (first) centreOn(v, 16, false);
    updateExpiry();
    return true;
  }

  function updateExpiry() {
    if (state.mode !== 'share' || state.expiresAt == null || state.gone) return;
    const left = state.expiresAt - now();
    if (left <= 0) {
      showGone('expired');
      return;
    }
    $('expires').textContent = 'expires in ' + timeLeft(left);
    $('expires').classList.toggle('soon', left < 10 * MIN);
  }

  async function startShare() {
    showApp();
    try {
      if (!(await loadShare())) return;
    } catch (e) {
      setConn('off', 'could not load the share');
      $('title').textContent = 'Could not load the shared location';
      setTimeout(startShare, 5 * SEC);
      return;
    }
    connect();
  }

  // ---- wiring

  function tick() {  // every second: the countdown and the card; the list every 5 s
    updateExpiry();
    if (state.gone) return;
    updateCard();
    state.ticks += 1;
    if (state.ticks % 5) return;
    const t = now();
    for (const v of state.vehicles.values()) {
      if (statusOf(v, t) !== v.status) refresh(v);
      else updateRow(v);
    }
    if (state.alerts.size && !$('tab-alerts').hidden) renderAlerts();  // their ages
  }

  function wire() {
    setTheme(initialTheme());
    $('theme').addEventListener('click', () => {
      const theme = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
      localStorage.setItem(THEME_STORE, theme);
      setTheme(theme);
    });
    $('signin-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const key = $('key').value.trim();
      if (key) startLive(key);
    });
    $('signout').addEventListener('click', () => signOut());
    $('search').addEventListener('input', applySearch);
    for (const button of document.querySelectorAll('#tabs button')) {
      button.addEventListener('click', () => showTab(button.dataset.tab));
    }
    $('card-close').addEventListener('click', unselect);
    $('follow').addEventListener('click', () => setFollow(!state.follow));
    $('card-replay').addEventListener('click', () => showTab('replay'));
    $('replay-form').addEventListener('submit', loadReplay);
    for (const button of document.querySelectorAll('#replay-form [data-hours]')) {
      button.addEventListener('click', () => setReplayRange(Number(button.dataset.hours)));
    }
    $('replay-slider').addEventListener('input', () => {
      const replay = state.replay;
      if (!replay) return;
      const first = replay.points[0].t, last = replay.points[replay.points.length - 1].t;
      setReplayTime(first + (last - first) * Number($('replay-slider').value) / 1000);
    });
    $('replay-play').addEventListener('click', playReplay);
    $('replay-exit').addEventListener('click', () => {
      stopReplay();
      const v = state.vehicles.get(state.selected);
      if (v && v.pos) {
        setFollow(true);
        centreOn(v, 16, false);
      }
    });
    setInterval(tick, SEC);

    if (state.mode === 'share') {
      startShare();
      return;
    }
    const params = new URLSearchParams(location.search);
    if (params.has('signed_out')) history.replaceState(null, '', '/');
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) startLive(saved);
    else showSignIn(params.get('signed_out') || '');
  }

  Object.assign(tracker, {statusOf, findStops});  // the rules, for tests
  wire();
})();
