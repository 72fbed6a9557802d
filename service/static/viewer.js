// The AlbedoGAN web viewer: ask the API for a face, show its GLB with three.js, offer the downloads.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { RoomEnvironment } from "three/addons/environments/RoomEnvironment.js";

const $ = (id) => document.getElementById(id);
const state = { loaded: false, error: null, vertexCount: 0, resultId: null, notes: [] };
window.viewerState = state; // read by the browser test

const canvas = $("canvas");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio);
renderer.outputColorSpace = THREE.SRGBColorSpace;
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x2a2e37);
const camera = new THREE.PerspectiveCamera(30, 1, 0.01, 10);
camera.position.set(0, 0.02, 0.75);
const controls = new OrbitControls(camera, canvas);
controls.target.set(0, 0.0, 0);
// a neutral room around the head (as glTF viewers light PBR assets) and a soft key light for its shape; Khronos'
// PBR Neutral tone mapping keeps the albedo's colours: the hemisphere + key light before left a front-facing cheek
// at ~0.85 of its albedo (sRGB) and side-facing ears brighter than the face
renderer.toneMapping = THREE.NeutralToneMapping;
const pmrem = new THREE.PMREMGenerator(renderer);
scene.environment = pmrem.fromScene(new RoomEnvironment(), 0.04).texture;
scene.environmentIntensity = 0.55;
const key = new THREE.DirectionalLight(0xffffff, 0.7);
key.position.set(0.5, 0.6, 1.0);
scene.add(key);

let head = null;
const materials = {};

function resize() {
  const { clientWidth: w, clientHeight: h } = canvas.parentElement;
  renderer.setSize(w, h, false);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
}
window.addEventListener("resize", resize);
resize();
renderer.setAnimationLoop(() => { controls.update(); renderer.render(scene, camera); });

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").style.color = isError ? "#ff8a80" : "";
  if (isError) state.error = text;
}

function applyMode() {
  if (!head) return;
  const mode = document.querySelector("input[name=mode]:checked").value;
  const detail = $("detail").checked;
  const material = materials[mode];
  if (materials.textured) materials.textured.normalMap = detail ? materials.normalMap : null;
  if (materials.shading) materials.shading.normalMap = detail ? materials.normalMap : null;
  // the eyes and the mouth are their own primitives with their own materials: each mesh keeps its own
  // textured / albedo material; the shading mode shows them all in grey
  head.traverse((o) => {
    if (!o.isMesh) return;
    o.material = mode === "shading" ? material : o.userData[mode] || material;
    o.material.needsUpdate = true;
  });
}

function showDownloads(links) {
  const ul = $("downloads");
  ul.replaceChildren();
  for (const [name, href] of Object.entries(links)) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = href; a.textContent = name; a.download = name;
    li.append(a); ul.append(li);
  }
}

// what a /reconstruct result says about its colours (result.texture): why they may not be the person's, and where
// the skin tone and the iris colour came from
const FLAG_TEXT = {
  greyscale: "greyscale photo: no skin or eye colour to take",
  colour_cast: "colour cast: the skin colour is the light's",
  over_exposed: "over-exposed: the skin level is a guess",
  under_exposed: "under-exposed: the skin level is a guess",
  no_skin_model: "too little skin seen to model its colour",
};

function colourNotes(texture) {
  if (!texture || !texture.iris) return [];
  const notes = (texture.flags || []).map((f) => FLAG_TEXT[f] || f);
  if (texture.skin_tone) notes.push(`skin tone from the ${texture.skin_tone}`);
  notes.push(`iris colour from the ${texture.iris.source}`);
  return notes;
}

async function showResult(result) {
  const gltf = await new GLTFLoader().loadAsync(result.links["mesh.glb"]);
  if (head) scene.remove(head);
  head = gltf.scene;
  let vertices = 0;
  let original = null;
  head.traverse((o) => {
    if (!o.isMesh) return;
    vertices += o.geometry.attributes.position.count;
    o.userData.textured = o.material;
    o.userData.albedo = new THREE.MeshBasicMaterial({ map: o.material.map, toneMapped: false });
    if (!original || o.material.normalMap) original = o.material; // the skin: the material with the normal map
  });
  materials.textured = original;
  materials.normalMap = original.normalMap;
  materials.albedo = new THREE.MeshBasicMaterial({ map: original.map, toneMapped: false });
  materials.shading = new THREE.MeshStandardMaterial({ color: 0xd0d0d0, roughness: 0.7, normalMap: original.normalMap });
  const box = new THREE.Box3().setFromObject(head);
  const centre = box.getCenter(new THREE.Vector3());
  head.position.sub(centre);
  scene.add(head);
  applyMode();
  showDownloads(result.links);
  const notes = colourNotes(result.texture);
  Object.assign(state, { loaded: true, error: null, vertexCount: vertices, resultId: result.id, notes });
  setStatus([`Face ${result.id.slice(0, 12)}… · ${vertices.toLocaleString()} vertices`, ...notes].join(" · "));
}

async function request(url, options) {
  state.loaded = false;
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setStatus("Generating…");
  try {
    const expression = {};
    if (+$("jaw").value > 0) expression.jawOpen = +$("jaw").value;
    if (+$("smile").value > 0) { expression.mouthSmileLeft = +$("smile").value; expression.mouthSmileRight = +$("smile").value; }
    const result = await request("/generate", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ seed: +$("seed").value, truncation: +$("truncation").value, expression,
        texture_size: 512, mesh_resolution: 256 }),
    });
    await showResult(result);
  } catch (err) { setStatus(`Could not generate: ${err.message}`, true); }
});

$("reconstruct-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("photo").files[0];
  if (!file) { setStatus("Choose a photo first.", true); return; }
  setStatus("Reconstructing…");
  try {
    const form = new FormData();
    form.append("image", file);
    form.append("albedo", $("albedo-source").value);
    await showResult(await request("/reconstruct", { method: "POST", body: form }));
  } catch (err) { setStatus(`Could not reconstruct: ${err.message}`, true); }
});

// AlbedoGAN at the face's latent needs a latent for the photo (an encoder 'ws' output or an albedo_latent graph):
// offer it only where the bundle has one
fetch("/models").then((r) => r.json()).then((models) => {
  const option = document.querySelector('#albedo-source option[value="generated"]');
  if (option && !(models.reconstruct_albedo || []).includes("generated")) {
    option.disabled = true;
    option.textContent += " (not in this bundle)";
  }
}).catch(() => {});

$("random").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * 2 ** 31);
  $("generate-form").requestSubmit();
});
$("truncation").addEventListener("input", () => { $("truncation-value").textContent = $("truncation").value; });
document.querySelectorAll("input[name=mode]").forEach((el) => el.addEventListener("change", applyMode));
$("detail").addEventListener("change", applyMode);
setStatus("Pick a seed and press Generate, or upload a photo.");
