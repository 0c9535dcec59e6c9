export {
  createKafkaConsumerRunner,
  DEFAULT_CONSUMER_BATCH_SIZE,
  decodeHeaders,
  KafkaConsumerRunner,
  type KafkaConsumerRunnerEvents,
  type KafkaConsumerRunnerHealth,
  type KafkaConsumerRunnerOptions,
  type KafkaRecord,
  type RunnerRecordEvent,
  type TopicPartitions,
} from './kafka-consumer-runner.js'
