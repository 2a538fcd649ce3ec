// The binary array format of the server ("DSA1"): bytes 0-3 the magic "DSA1", 4-7 the uint32 little-endian
// length of a JSON header {"dtype", "shape"}, the header padded with spaces to a multiple of 8, then the raw
// little-endian C-order data. The server's encoder is deepscope.app.server; this is its one decoder.

const TYPES = { float32: Float32Array, uint8: Uint8Array, int32: Int32Array, uint16: Uint16Array };

/** An ArrayBuffer in the DSA1 format -> {dtype, shape, data (a typed array over the same memory), header (the
 * whole JSON header: a heat map carries its `meta` there)}. */
export function decode(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== "DSA1") throw new Error(`not a DSA1 array (starts with ${JSON.stringify(magic)})`);
  const headerLength = new DataView(buffer).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const Type = TYPES[header.dtype];
  if (!Type) throw new Error(`DSA1 dtype ${header.dtype} is not one of ${Object.keys(TYPES).join(", ")}`);
  const start = 8 + headerLength;
  const count = header.shape.reduce((a, b) => a * b, 1);
  if (buffer.byteLength - start < count * Type.BYTES_PER_ELEMENT) {
    throw new Error(`DSA1 array of shape [${header.shape}] is truncated`);
  }
  // A typed array must start at a multiple of its element size: the padding guarantees it.
  return { dtype: header.dtype, shape: header.shape, data: new Type(buffer, start, count), header };
}

/** Column `column` of a 2-D array [rows, columns] as a new typed array. */
export function column(array, column) {
  const [rows, columns] = array.shape;
  const out = new array.data.constructor(rows);
  for (let row = 0; row < rows; row += 1) out[row] = array.data[row * columns + column];
  return out;
}
