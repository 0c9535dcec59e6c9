export {
  createKafkaTransport,
  KafkaTransport,
  type KafkaTransportOptions,
  protocolErrorType,
} from './kafka-transport.js'
