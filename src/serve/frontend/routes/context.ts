// What every route module gets from buildApp: its options and the state routes share.
import type { AppOptions } from '../app.js';
import type { Admission } from '../admission.js';
import type { RecentRequests } from '../recent.js';

export interface RouteContext {
  options: AppOptions;
  admission: Admission;
  /** The last requests and a window of their latencies, for the dashboard. */
  recent: RecentRequests;
}
