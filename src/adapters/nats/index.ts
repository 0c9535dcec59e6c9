export {
  createNatsConsumerRunner,
  NatsConsumerRunner,
  type NatsConsumerRunnerEvents,
  type NatsConsumerRunnerHealth,
  type NatsConsumerRunnerOptions,
  type NatsRecord,
  type NatsRecordEvent,
} from './nats-consumer-runner.js'
export {
  createNatsTransport,
  NATS_KEY_HEADER,
  NATS_MSG_ID_HEADER,
  NatsTransport,
  type NatsTransportOptions,
} from './nats-transport.js'
