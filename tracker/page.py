"""The live map page at ``/``: Leaflet served from the xstatic-leaflet package.

A small first version for operators: paste an API key, watch every vehicle
move. The recovery team's full page (search, replay, share links) builds on it.
"""

from __future__ import annotations

import xstatic.pkg.leaflet as leaflet
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def mount_static(app: FastAPI) -> None:
    app.mount("/static/leaflet", StaticFiles(directory=leaflet.BASE_DIR), name="leaflet")


PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Collateral tracker: live map</title>
<link rel="stylesheet" href="/static/leaflet/leaflet.css">
<style>
 html,body{margin:0;height:100%;font:16px system-ui,sans-serif;background:#111;color:#eee}
 #bar{position:absolute;z-index:1000;top:0;left:0;right:0;padding:8px;background:#222c;
      display:flex;gap:8px;align-items:center}
 #bar input{flex:1;font-size:16px;padding:10px;border-radius:6px;border:0}
 #bar button{font-size:16px;padding:10px 16px;border-radius:6px;border:0}
 #map{position:absolute;top:0;bottom:0;left:0;right:0}
 #status{min-width:8em}
</style></head>
<body>
<div id="bar"><input id="key" type="password" placeholder="API key" autocomplete="off">
<button id="go">Watch</button><span id="status">not connected</span></div>
<div id="map"></div>
<script src="/static/leaflet/leaflet.js"></script>
<script>
const map = L.map('map').setView([20, 0], 2);
L.tileLayer('https://tile.openstreetmap.org/{z}/{x}/{y}.png',
  {maxZoom: 19, attribution: '&copy; OpenStreetMap contributors'}).addTo(map);
const markers = {};
let fitted = false;
function show(p) {
  const label = p.vehicle_id + ' · ' + p.speed_kmh + ' km/h · ' + p.fix_time;
  let m = markers[p.vehicle_id];
  if (!m) { m = markers[p.vehicle_id] = L.marker([p.lat, p.lon]).addTo(map); }
  m.setLatLng([p.lat, p.lon]).bindTooltip(label);
  if (!fitted) { map.setView([p.lat, p.lon], 14); fitted = true; }
}
function connect(key) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(proto + '//' + location.host + '/api/v1/live?token=' +
                           encodeURIComponent(key));
  const status = document.getElementById('status');
  ws.onopen = () => { status.textContent = 'live'; ws.send(JSON.stringify({subscribe: '*'})); };
  ws.onclose = () => { status.textContent = 'disconnected'; };
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === 'snapshot') msg.positions.forEach(show);
    else if (msg.type === 'position' && msg.latest) show(msg);
  };
}
document.getElementById('go').onclick = () => {
  const key = document.getElementById('key').value.trim();
  sessionStorage.setItem('tracker-key', key); connect(key);
};
const saved = sessionStorage.getItem('tracker-key');
if (saved) { document.getElementById('key').value = saved; connect(saved); }
</script></body></html>
"""
