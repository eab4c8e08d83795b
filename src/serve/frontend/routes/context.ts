// What every route module gets from buildApp: its options and the state routes share.
import type { AppOptions } from '../app.js';
import type { Admission } from '../admission.js';

export interface RouteContext {
  options: AppOptions;
  admission: Admission;
}
