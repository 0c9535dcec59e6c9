export {
  createNatsConsumerRunner,
  NatsConsumerRunner,
  type NatsConsumerRunnerOptions,
  type NatsRecord,
} from './nats-consumer-runner.js'
export {
  createNatsTransport,
  NATS_KEY_HEADER,
  NATS_MSG_ID_HEADER,
  NatsTransport,
  type NatsTransportOptions,
} from './nats-transport.js'
