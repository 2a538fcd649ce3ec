// regl ships as a UMD script (index.html loads it, defining globalThis.createREGL); regl-scatterplot's ES
// module imports "regl", which the page's import map resolves to this module.
export default globalThis.createREGL;
