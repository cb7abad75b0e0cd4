import assert from 'node:assert/strict';
import path from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { useTestServer } from '../helpers/fixture';

const REFLECTION_PROTO = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_message: string };
}

/** One request on the bidi ServerReflectionInfo stream, as generic tools (grpcurl, Postman) send it. */
function reflect(address: string, request: Record<string, string>): Promise<ReflectionResponse> {
  const definition = grpc.loadPackageDefinition(loadSync(REFLECTION_PROTO, { keepCase: true })) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } };
  };
  const client = new definition.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = (client as unknown as { ServerReflectionInfo(): grpc.ClientDuplexStream<object, ReflectionResponse> }).ServerReflectionInfo();
    call.on('data', (res: ReflectionResponse) => {
      resolve(res);
      call.end();
      client.close();
    });
    call.on('error', (err) => {
      client.close();
      reject(err);
    });
    call.write(request);
  });
}

describe('gRPC server reflection', () => {
  const server = useTestServer();

  it('lists isogear.v1.GearsService and the health service', async () => {
    const res = await reflect(server().server.grpcAddress, { list_services: '' });
    const names = (res.list_services_response?.service ?? []).map((s) => s.name);
    assert.ok(names.includes('isogear.v1.GearsService'), JSON.stringify(names));
    assert.ok(names.includes('grpc.health.v1.Health'), JSON.stringify(names));
  });

  it('describes GearsService so a generic client can call it', async () => {
    const res = await reflect(server().server.grpcAddress, { file_containing_symbol: 'isogear.v1.GearsService' });
    const files = res.file_descriptor_response?.file_descriptor_proto ?? [];
    assert.ok(files.length > 0, JSON.stringify(res.error_response));
    const text = Buffer.concat(files.map((f) => Buffer.from(f))).toString('latin1');
    const rpcs = ['Execute', 'Register', 'Release', 'Trigger', 'GetInterpreter', 'ListInterpreters', 'ListRegistrations'];
    const executionRpcs = ['StartExecute', 'StartTrigger', 'GetExecution', 'WaitExecution', 'ListExecutions', 'CancelExecution'];
    for (const rpc of [...rpcs, ...executionRpcs]) {
      assert.ok(text.includes(rpc), `descriptor names ${rpc}`);
    }
  });

  it('describes the background execution RPCs with their request and response types', async () => {
    const res = await reflect(server().server.grpcAddress, { file_containing_symbol: 'isogear.v1.GearsService' });
    const files = (res.file_descriptor_response?.file_descriptor_proto ?? []).map((f) => fromBinary(FileDescriptorProtoSchema, Buffer.from(f)));
    const gears = files.find((f) => f.package === 'isogear.v1' && f.service.some((s) => s.name === 'GearsService'));
    assert.ok(gears, `a file declares isogear.v1.GearsService: ${files.map((f) => f.name).join(', ')}`);
    const methods = new Map(gears.service.find((s) => s.name === 'GearsService')?.method.map((m) => [m.name, `${m.inputType} -> ${m.outputType}`]));
    const expected: Record<string, string> = {
      StartExecute: '.isogear.v1.ExecuteRequest -> .isogear.v1.Execution',
      StartTrigger: '.isogear.v1.TriggerRequest -> .isogear.v1.Execution',
      GetExecution: '.isogear.v1.GetExecutionRequest -> .isogear.v1.Execution',
      WaitExecution: '.isogear.v1.WaitExecutionRequest -> .isogear.v1.Execution',
      ListExecutions: '.isogear.v1.ListExecutionsRequest -> .isogear.v1.ListExecutionsResponse',
      CancelExecution: '.isogear.v1.CancelExecutionRequest -> .isogear.v1.Execution',
    };
    for (const [rpc, signature] of Object.entries(expected)) assert.equal(methods.get(rpc), signature, `GearsService.${rpc}`);
    // a generic client can build the messages too: the execution types are described with the service
    const messages = new Set(gears.messageType.map((m) => m.name));
    for (const name of ['Execution', 'GetExecutionRequest', 'WaitExecutionRequest', 'ListExecutionsRequest', 'ListExecutionsResponse', 'CancelExecutionRequest']) {
      assert.ok(messages.has(name), `descriptor declares message ${name}`);
    }
    const enums = new Set(gears.enumType.map((e) => e.name));
    assert.ok(enums.has('ExecutionState') && enums.has('ExecutionKind'), [...enums].join(', '));
  });

  it('resolves each background execution method by its full name', async () => {
    for (const rpc of ['StartExecute', 'StartTrigger', 'GetExecution', 'WaitExecution', 'ListExecutions', 'CancelExecution']) {
      const res = await reflect(server().server.grpcAddress, { file_containing_symbol: `isogear.v1.GearsService.${rpc}` });
      assert.ok((res.file_descriptor_response?.file_descriptor_proto ?? []).length > 0, `${rpc}: ${JSON.stringify(res.error_response)}`);
    }
  });
});
