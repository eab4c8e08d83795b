// /v1/models: the one model this deployment serves.
import type { FastifyInstance } from 'fastify';

import { KvfError } from '../../../common/errors.js';
import type { RouteContext } from './context.js';

export function modelRoutes(app: FastifyInstance, { options }: RouteContext): void {
  const model = {
    id: options.modelName,
    object: 'model',
    created: Math.floor(Date.now() / 1000),
    owned_by: 'kvfabric',
    ...(options.modelWarning ? { kvfabric_warning: options.modelWarning } : {}),
  };
  app.get('/v1/models', () => ({ object: 'list', data: [model] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', (req) => {
    if (req.params.id !== model.id)
      throw new KvfError('KVF_ERR_UNKNOWN_MODEL', `model '${req.params.id}' is not served here; this deployment serves '${model.id}'`);
    return model;
  });
}
