// A payload's fields checked against its message type before packing, and
// its 64-bit integers decoded without rounding.
//
// protobufjs alone drops what it does not know: a misspelt field, or one
// named in camelCase while the client keeps the .proto's snake_case, was
// sent as its default value (an empty owner, a transfer to ''). Here a key
// is a field's name or its camelCase form, or the pack is refused
// (UNKNOWN_FIELD) before anything is sent.

import protobuf from 'protobufjs';

import { Problem } from './problem.js';

const LONG_TYPES = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const DECIMAL = /^-?\d+$/;
const ANY = 'google.protobuf.Any'; // protobufjs converts it itself ({ '@type', ... } or { type_url, value })

function isPlainObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value);
}

function fieldsByKey(type) {
  const byKey = new Map();
  for (const field of type.fieldsArray) {
    byKey.set(field.name, field);
    byKey.set(protobuf.util.camelCase(field.name), field);
  }
  return byKey;
}

/** An int64-like value (a safe integer, a BigInt or a decimal string) as a Long, or a Problem. */
function toLong(value, field, where) {
  const unsigned = field.type === 'uint64' || field.type === 'fixed64';
  let exact;
  if (typeof value === 'bigint') exact = value;
  else if (typeof value === 'string' && DECIMAL.test(value)) exact = BigInt(value);
  else if (Number.isSafeInteger(value)) exact = BigInt(value);
  else {
    throw new Problem(
      'INVALID_FIELD',
      `${where}: ${String(value)} is not a 64-bit integer (a safe integer Number, a BigInt or a decimal string)`,
      { field: where },
    );
  }
  const [least, most] = unsigned ? [0n, 2n ** 64n - 1n] : [-(2n ** 63n), 2n ** 63n - 1n];
  if (exact < least || exact > most) {
    throw new Problem('INVALID_FIELD', `${where}: ${exact} is out of ${field.type}'s range`, { field: where });
  }
  return protobuf.util.Long.fromString(exact.toString(), unsigned);
}

function convertValue(field, value, where) {
  if (LONG_TYPES.has(field.type)) return toLong(value, field, where);
  const nested = field.resolve().resolvedType;
  if (nested instanceof protobuf.Type && nested.fullName.slice(1) !== ANY && isPlainObject(value)) {
    return checkedFields(nested, value, `${where}.`);
  }
  return value; // checked by the type's verify()
}

/**
 * `fields` with each key the .proto's field name and each 64-bit integer a
 * Long, or a Problem: UNKNOWN_FIELD for a key that is no field (metadata
 * `field`: its path, e.g. 'owner' or 'address.street'), INVALID_FIELD for a
 * field given twice (snake and camel case) or a value of the wrong kind.
 */
export function checkedFields(type, fields, prefix = '') {
  if (!isPlainObject(fields)) {
    throw new Problem('INVALID_FIELD', `${prefix || type.name}: fields must be a plain object`, { field: prefix });
  }
  const byKey = fieldsByKey(type);
  const checked = {};
  for (const [key, value] of Object.entries(fields)) {
    const where = `${prefix}${key}`;
    const field = byKey.get(key);
    if (field === undefined) {
      throw new Problem('UNKNOWN_FIELD', `${type.fullName.slice(1)} has no field ${where}`, { field: where });
    }
    if (field.name in checked) {
      throw new Problem('INVALID_FIELD', `${where}: field ${field.name} given twice`, { field: where });
    }
    if (value === undefined || value === null) continue;
    if (field.map) {
      if (!isPlainObject(value)) {
        throw new Problem('INVALID_FIELD', `${where}: a map must be an object`, { field: where });
      }
      checked[field.name] = Object.fromEntries(
        Object.entries(value).map(([k, v]) => [k, convertValue(field, v, `${where}.${k}`)]),
      );
    } else if (field.repeated) {
      if (!Array.isArray(value)) throw new Problem('INVALID_FIELD', `${where}: must be an array`, { field: where });
      checked[field.name] = value.map((v, i) => convertValue(field, v, `${where}[${i}]`));
    } else {
      checked[field.name] = convertValue(field, value, where);
    }
  }
  return checked;
}

// How 64-bit integers of payloads and states are decoded (setInt64Decoding).
let int64Mode = 'number';

/**
 * How unpack() hands 64-bit integers of payloads and states over:
 * 'number' (the default: a Number, and a value beyond 2^53, which a Number
 * cannot hold exactly, refused with INT64_PRECISION rather than rounded),
 * 'bigint' or 'string' (decimal), exact whatever the value.
 */
export function setInt64Decoding(mode) {
  if (!['number', 'bigint', 'string'].includes(mode)) {
    throw new Problem('INVALID_OPTION', `setInt64Decoding: 'number', 'bigint' or 'string', not ${String(mode)}`);
  }
  int64Mode = mode;
}

function fromDecimal(decimal, where) {
  if (int64Mode === 'string') return decimal;
  if (int64Mode === 'bigint') return BigInt(decimal);
  const number = Number(decimal);
  if (!Number.isSafeInteger(number)) {
    throw new Problem(
      'INT64_PRECISION',
      `${where} is ${decimal}, beyond what a Number holds exactly: setInt64Decoding('bigint') or ('string')`,
      { field: where },
    );
  }
  return number;
}

function decodedValue(field, value, where) {
  if (LONG_TYPES.has(field.type)) return fromDecimal(value, where);
  const nested = field.resolvedType;
  if (nested instanceof protobuf.Type && isPlainObject(value)) return exactLongs(nested, value, `${where}.`);
  return value;
}

/** An object from toObject({ longs: String }) with its 64-bit integers as setInt64Decoding says. */
export function exactLongs(type, object, prefix = '') {
  for (const field of type.fieldsArray) {
    const value = object[field.name];
    if (value === undefined || value === null) continue;
    const where = `${prefix}${field.name}`;
    if (field.map) {
      for (const key of Object.keys(value)) value[key] = decodedValue(field, value[key], `${where}.${key}`);
    } else if (field.repeated) {
      object[field.name] = value.map((v, i) => decodedValue(field, v, `${where}[${i}]`));
    } else {
      object[field.name] = decodedValue(field, value, where);
    }
  }
  return object;
}
