// The completion records: successful transfers reach JS as numbers in one Float64Array the agent allocates
// once and hands to the addon (an object per completion cost more than a shm READ). The layout is defined once,
// in native/binding/records.h; every offset here comes from the table the addon exports. A header
// (RECORD_HEADER) says how many records follow and whether a post left events that only a reap() delivers;
// then come the records, RECORD_STRIDE numbers each (RECORD_FIELD). Everything else arrives as an event object.
import { addon } from './native.js';

const layout = addon.recordLayout;
export const RECORD_HEADER_SIZE = layout.headerSize;
export const RECORD_STRIDE = layout.stride;
export const RECORD_HEADER = Object.freeze({ ...layout.header });
export const RECORD_FIELD = Object.freeze({ ...layout.fields });
export const RECORD_FLAG = Object.freeze({ ...layout.flags });
/** Transfers the shared records buffer holds; a larger batch arrives in a buffer of its own. */
export const RECORDS_CAPACITY = 256;

export function newRecordsBuffer(): Float64Array {
  return new Float64Array(RECORD_HEADER_SIZE + RECORD_STRIDE * RECORDS_CAPACITY);
}
